"""The serving check: may a call for a workspace run on this node, and under which epoch.

Read-only: it looks at the slot table, the watch-fed owners map and placement, and answers
with an :class:`Authorization` (the epoch travels with the call to the session) or refuses:
``NotOwner`` naming the node that serves the workspace, ``Unavailable`` with a retry hint
while it moves. A workspace whose slot nobody owns yet and that placement gives this node is
refused with :class:`AcquireFirst`: the caller may acquire it on demand (an empty slot has
no owner until its first call) and ask again. Handing slots off is the reconciler's job,
never a call's.

A workspace is served by the holder of ``pinned-owners/<ws>`` when it is pinned, else by the
holder of ``owners/<slot>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.placement import NodePlacement
from node.slot_table import SlotTable, Unit
from registry import NotOwner, OwnershipView, Unavailable, slot_of

MOVING_RETRY_AFTER_MS = 100
"""Retry hint while a slot or workspace is handed off or acquired: the gateway retries."""
NO_LEASE_RETRY_AFTER_MS = 200
"""Retry hint while this node has no lease (it fenced itself)."""
NO_TARGET_RETRY_AFTER_MS = 500
"""Retry hint while no node can take a slot."""


def moving(what: object) -> Unavailable:
    """The retryable refusal of a call whose unit is moving."""
    return Unavailable(f"{what} is moving", retry_after_ms=MOVING_RETRY_AFTER_MS)


class AcquireFirst(Unavailable):
    """Nobody owns the unit and placement gives it to this node: acquire it, then ask again.
    Unanswered, it is a retryable ``UNAVAILABLE``."""

    def __init__(self, unit: Unit) -> None:
        super().__init__(f"{unit} is moving", retry_after_ms=MOVING_RETRY_AFTER_MS)
        self.unit = unit


@dataclass(frozen=True)
class Authorization:
    """A call may run here: for ``unit``, under the owner epoch ``epoch``."""

    unit: Unit
    epoch: int


class ServingCheck:
    """Answers "may this call run here?" (see the module docstring)."""

    def __init__(
        self,
        *,
        slots: SlotTable,
        view: OwnershipView,
        placement: NodePlacement,
        is_lease_confirmed: Callable[[], bool],
    ) -> None:
        self._node_id = placement.node_id
        self._is_lease_confirmed = is_lease_confirmed
        self._slots = slots
        self._view = view
        self._placement = placement
        self._slot_count = placement.ring.slot_count

    def check(self, workspace_id: str) -> Authorization:
        """The authorization of a call for ``workspace_id``; raises ``NotOwner``,
        ``Unavailable`` or :class:`AcquireFirst` (see the module docstring)."""
        slots = self._slots
        self._require_lease()
        pin = self._view.pin_of(workspace_id)
        if pin is not None:
            return self._check_pinned(workspace_id, pin)
        pinned_holder = self._view.pinned_owner_of(workspace_id)
        if pinned_holder is not None and pinned_holder.node_id != self._node_id:
            raise moving(f"workspace {workspace_id} (unpinned)")  # its pinned owner lets go
        if slots.owner_of_pin(workspace_id) is not None:
            raise moving(f"workspace {workspace_id} (unpinned)")
        slot = slot_of(workspace_id, self._slot_count)
        if slots.is_handing_off_slot(slot):
            raise moving(f"slot {slot}")
        owner = slots.owner_of_slot(slot)
        if owner is not None:
            return Authorization(Unit.slot(slot), owner.epoch)
        holder = self._view.owner_of_slot(slot)
        if holder is not None and holder.node_id != self._node_id:
            raise NotOwner(
                f"slot {slot} belongs to {holder.node_id}",
                owner=self._placement.hint(holder.node_id),
            )
        target = self._placement.target_of(slot, for_owned=False)
        if target == self._node_id and not slots.is_draining:
            raise AcquireFirst(Unit.slot(slot))
        if target is None:
            raise Unavailable(
                f"no node can take slot {slot} now", retry_after_ms=NO_TARGET_RETRY_AFTER_MS
            )
        raise NotOwner(f"slot {slot} goes to {target}", owner=self._placement.hint(target))

    def _require_lease(self) -> None:
        if not self._slots.has_lease or not self._is_lease_confirmed():
            raise Unavailable(
                f"node {self._node_id} has no confirmed lease",
                retry_after_ms=NO_LEASE_RETRY_AFTER_MS,
            )

    def confirm(self, authorization: Authorization) -> None:
        """Before acknowledging a change made under ``authorization``: the lease is still
        confirmed and the unit still owned under the same epoch, else ``Unavailable`` (the
        caller retries; what was written is found again by its id)."""
        self._require_lease()
        unit = authorization.unit
        if unit.kind == "slot":
            owner = self._slots.owner_of_slot(int(unit.key))
        else:
            owner = self._slots.owner_of_pin(str(unit.key))
        if owner is None or owner.epoch != authorization.epoch:
            raise moving(unit)

    def _check_pinned(self, workspace_id: str, pin: str) -> Authorization:
        if pin != self._node_id:
            raise NotOwner(
                f"workspace {workspace_id} is pinned to {pin}", owner=self._placement.hint(pin)
            )
        if self._slots.is_handing_off_pin(workspace_id):
            raise moving(f"workspace {workspace_id}")
        owner = self._slots.owner_of_pin(workspace_id)
        if owner is None:
            raise AcquireFirst(Unit.pin(workspace_id))
        return Authorization(Unit.pin(workspace_id), owner.epoch)

    def admits(self, workspace_id: str) -> bool:
        """Whether this node serves ``workspace_id`` right now (a sync question: the session
        manager asks it right before a new session joins, after every await)."""
        slots = self._slots
        if not slots.has_lease:
            return False
        if slots.owner_of_pin(workspace_id) is not None:
            return not slots.is_handing_off_pin(workspace_id)
        slot = slot_of(workspace_id, self._slot_count)
        return slots.owner_of_slot(slot) is not None and not slots.is_handing_off_slot(slot)

    def wants(self, workspace_id: str) -> bool:
        """Whether this node should run ``workspace_id``'s sessions, given what it owns."""
        slots = self._slots
        if slots.owner_of_pin(workspace_id) is not None:
            return not slots.is_handing_off_pin(workspace_id)
        if self._view.pin_of(workspace_id) is not None:
            return False
        holder = self._view.pinned_owner_of(workspace_id)
        if holder is not None and holder.node_id != self._node_id:
            return False  # wait until the previous pinned owner released it
        slot = slot_of(workspace_id, self._slot_count)
        return slots.owner_of_slot(slot) is not None and not slots.is_handing_off_slot(slot)
