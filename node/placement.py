"""Placement as this node sees it: the live nodes (itself as draining while it drains), where
placement puts a slot, and how to name another node to a caller."""

from __future__ import annotations

from dataclasses import replace

from node.slot_table import SlotTable
from registry import DRAINING, MembershipWatcher, NodeRecord, RingTable, place_slot


class NodePlacement:
    """Placement from this node's watch-fed membership and ring."""

    def __init__(
        self, *, node_id: str, membership: MembershipWatcher, ring: RingTable, slots: SlotTable
    ) -> None:
        self._node_id = node_id
        self._membership = membership
        self._ring = ring
        self._slots = slots

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._node_id

    @property
    def ring(self) -> RingTable:
        """The ring's slot table this node places by."""
        return self._ring

    def nodes(self, *, for_owned: bool, excluding_me: bool = False) -> dict[str, NodeRecord]:
        """The live nodes as placement should see them from here.

        This node counts as draining while it drains. For slots it already owns its own load
        is ignored: being full keeps what it has, it only stops taking more."""
        nodes = self._membership.nodes()
        me = nodes.get(self._node_id)
        if me is not None:
            if excluding_me or self._slots.is_draining:
                nodes[self._node_id] = replace(me, state=DRAINING)
            elif for_owned:
                nodes[self._node_id] = replace(me, load=0)
        return nodes

    def target_of(self, slot: int, *, for_owned: bool) -> str | None:
        """Where placement puts ``slot`` now."""
        return place_slot(self._ring, self.nodes(for_owned=for_owned), slot)

    def is_alive(self, node_id: str) -> bool:
        """Whether ``node_id`` is a live member now."""
        return node_id in self._membership.nodes()

    def hint(self, node_id: str) -> str:
        """``node_id@host:port`` for a caller to go to, empty if the node is not alive."""
        record = self._membership.nodes().get(node_id)
        return f"{node_id}@{record.address}" if record is not None else ""
