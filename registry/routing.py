"""The consistent-hash ring and the slot routing table built from it.

CONTRACT (filled in by the registry work; signatures are fixed, other packages use them).
"""

from __future__ import annotations

from collections.abc import Iterable

from registry.membership import NodeRecord
from registry.slots import DEFAULT_SLOT_COUNT


class Ring:
    """uhashring (ketama) over nodes, weights proportional to capacity."""

    def __init__(self, nodes: Iterable[NodeRecord]) -> None:
        raise NotImplementedError

    @property
    def node_ids(self) -> list[str]:
        """The nodes on the ring, sorted."""
        raise NotImplementedError

    def node_for_slot(self, slot: int) -> str | None:
        """The node the ring gives ``slot`` (None on an empty ring)."""
        raise NotImplementedError

    def preference_list(self, slot: int, count: int) -> list[str]:
        """Up to ``count`` distinct nodes for ``slot``, in ring order."""
        raise NotImplementedError


class RoutingTable:
    """Slot → node as a fixed-size array, rebuilt only when membership changes."""

    def __init__(self, *, slot_count: int = DEFAULT_SLOT_COUNT) -> None:
        raise NotImplementedError

    @property
    def version(self) -> int:
        """Increments every time the ring is rebuilt (0 = never built)."""
        raise NotImplementedError

    @property
    def slot_count(self) -> int:
        """Number of slots."""
        raise NotImplementedError

    def update(self, nodes: dict[str, NodeRecord]) -> None:
        """Adopt a new live set; rebuilds the ring only if the active ids or weights changed."""
        raise NotImplementedError

    def route(self, workspace_id: str) -> NodeRecord | None:
        """The node that serves ``workspace_id`` now (None when no node is active)."""
        raise NotImplementedError

    def node_for_slot(self, slot: int) -> NodeRecord | None:
        """The node that serves ``slot`` now."""
        raise NotImplementedError
