"""Placement: the ring proposes, bounded loads filter. Used only for slots without an owner
and to decide hand-offs; the owners map in etcd is the routing truth.

Every node and the gateway compute placement on their own and must agree, so it depends only
on its inputs: the ring (built from the same live set) and the node records.
"""

from __future__ import annotations

from registry.membership import NodeRecord
from registry.ring import RingTable


def can_take_work(record: NodeRecord | None) -> bool:
    """Whether placement may give ``record`` a slot: it is live, active and below its cap."""
    return record is not None and record.is_active and record.load < record.capacity


def place_slot(ring: RingTable, nodes: dict[str, NodeRecord], slot: int) -> str | None:
    """The node that should own ``slot``: the first node of the ring's preference list that is
    active and below its capacity (consistent hashing with bounded loads); None if none is."""
    # The ring holds only active nodes, so its size bounds the walk.
    candidates = ring.ring.preference_list(slot, len(ring.ring.node_ids))
    for node_id in candidates:
        if can_take_work(nodes.get(node_id)):
            return node_id
    return None
