"""Which node serves a workspace: its pin, then its slot's owner, then placement.

:class:`Resolver` follows membership into a :class:`registry.RingTable` and reads the owners
map from an :class:`registry.OwnershipView`: a resolve is a few dict lookups on watch-fed
copies, never an etcd read. The gateway and the proxyless client resolve with it alike.
"""

from __future__ import annotations

from collections.abc import Callable

from registry import (
    DEFAULT_SLOT_COUNT,
    MembershipWatcher,
    NodeRecord,
    OwnershipView,
    RingTable,
    Unavailable,
    place_slot,
    slot_of,
)

CAPACITY_RETRY_AFTER_MS = 500
"""Retry hint when every active node is at capacity."""


class Resolver:
    """workspace → the node that serves it now (see the module docstring)."""

    def __init__(
        self,
        membership: MembershipWatcher,
        ownership: OwnershipView,
        *,
        cluster: str,
        slot_count: int = DEFAULT_SLOT_COUNT,
    ) -> None:
        self._membership = membership
        self._ownership = ownership
        self._cluster = cluster
        self._ring = RingTable(slot_count=slot_count)
        self._nodes: dict[str, NodeRecord] = {}
        self._listeners: list[Callable[[dict[str, NodeRecord]], None]] = []
        self._is_started = False

    @property
    def cluster(self) -> str:
        """The cluster it resolves in."""
        return self._cluster

    @property
    def ring(self) -> RingTable:
        """The ring's slot table, rebuilt from membership."""
        return self._ring

    @property
    def ownership(self) -> OwnershipView:
        """The watch-fed owners map."""
        return self._ownership

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """The live nodes by id, as last seen (do not mutate)."""
        return self._nodes

    def start(self, *, on_nodes: Callable[[dict[str, NodeRecord]], None] | None = None) -> None:
        """Follow membership (the current set at once, then every change); ``on_nodes(nodes)``
        is told each new live set after the resolver has applied it."""
        if on_nodes is not None:
            self._listeners.append(on_nodes)
        self._membership.subscribe(self._on_members)
        self._is_started = True

    def stop(self) -> None:
        """Stop following membership."""
        if self._is_started:
            self._membership.unsubscribe(self._on_members)
            self._is_started = False

    def _on_members(self, nodes: dict[str, NodeRecord]) -> None:
        self._ring.update(nodes)
        self._nodes = nodes
        for listener in self._listeners:
            listener(nodes)

    def resolve(self, workspace_id: str) -> NodeRecord:
        """The node serving ``workspace_id``: its pin (the pinned owner if held), else its
        slot's owner, else placement; ``Unavailable`` when no node can take it."""
        ownership, nodes = self._ownership, self._nodes
        pinned_node_id = ownership.pin_of(workspace_id)
        if pinned_node_id is not None:
            pinned_owner = ownership.pinned_owner_of(workspace_id)
            node_id = pinned_node_id if pinned_owner is None else pinned_owner.node_id
            # A pin to a node that is gone falls back to the slot: the pin is only intent.
            record = nodes.get(node_id)
            if record is not None:
                return record
        slot = slot_of(workspace_id, self._ring.slot_count)
        owner = ownership.owner_of_slot(slot)
        if owner is not None and (record := nodes.get(owner.node_id)) is not None:
            return record
        placed = place_slot(self._ring, nodes, slot)
        record = None if placed is None else nodes.get(placed)
        if record is not None:
            return record
        if any(node.is_active for node in nodes.values()):
            raise Unavailable(
                f"every active node of cluster {self._cluster} is at capacity",
                retry_after_ms=CAPACITY_RETRY_AFTER_MS,
            )
        raise Unavailable(f"no node is alive in cluster {self._cluster}")
