"""Placement: the ring proposes, bounded loads filter. Used only for slots without an owner
and to decide hand-offs; the owners map in etcd is the routing truth.

Every node and the gateway compute placement on their own and must agree, so it depends only
on its inputs: the ring (built from the same live set) and the node records.
"""

from __future__ import annotations

from registry.errors import Unavailable
from registry.membership import NodeRecord
from registry.ownership import OwnershipView
from registry.routing import RoutingTable
from registry.slots import slot_of


def can_take_work(record: NodeRecord | None) -> bool:
    """Whether placement may give ``record`` a slot: it is live, active and below its cap."""
    return record is not None and record.is_active and record.load < record.capacity


def place_slot(routing: RoutingTable, nodes: dict[str, NodeRecord], slot: int) -> str | None:
    """The node that should own ``slot``: the first node of the ring's preference list that is
    active and below its capacity (consistent hashing with bounded loads); None if none is."""
    # The ring holds only active nodes, so its size bounds the walk.
    candidates = routing.ring.preference_list(slot, len(routing.ring.node_ids))
    for node_id in candidates:
        if can_take_work(nodes.get(node_id)):
            return node_id
    return None


def resolve_node(
    workspace_id: str,
    *,
    routing: RoutingTable,
    nodes: dict[str, NodeRecord],
    ownership: OwnershipView,
    cluster: str,
) -> NodeRecord:
    """The node serving ``workspace_id``: its pin (the pinned owner if held), else its slot's
    owner, else placement; ``Unavailable`` when no node can take it. Dict reads only: the
    gateway and the proxyless client call it per call on their watch-fed views."""
    pinned_node_id = ownership.pin_of(workspace_id)
    if pinned_node_id is not None:
        pinned_owner = ownership.pinned_owner_of(workspace_id)
        node_id = pinned_node_id if pinned_owner is None else pinned_owner.node_id
        # A pin to a node that is gone falls back to the slot: the pin is only intent.
        record = nodes.get(node_id)
        if record is not None:
            return record
    slot = slot_of(workspace_id, routing.slot_count)
    owner = ownership.owner_of_slot(slot)
    if owner is not None and (record := nodes.get(owner.node_id)) is not None:
        return record
    placed = place_slot(routing, nodes, slot)
    record = None if placed is None else nodes.get(placed)
    if record is not None:
        return record
    if any(node.is_active for node in nodes.values()):
        raise Unavailable(
            f"every active node of cluster {cluster} is at capacity", retry_after_ms=500
        )
    raise Unavailable(f"no node is alive in cluster {cluster}")
