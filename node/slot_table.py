"""Who owns what on this node: the slot table.

It holds the slots and pinned workspaces this node owns (each with the epoch it took it
under), which of them are being handed off, whether the node has a lease and whether it
drains — and it is the only writer of all of that. Everything else reads it: the serving
check asks it whether a call may run, the reconciler what to move; the moves, the lease fence
and the drain request change it through its methods.

Every step on one unit (a slot, or a pinned workspace) — an acquire and its restores, a
handoff, a restore after a pin left — runs under that unit's lock (:meth:`step`), so the steps
on one unit never interleave and a call can wait for the one in progress (:meth:`settled`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

from node.metrics import NodeMetrics
from node.readiness import Readiness
from registry import Owner, OwnershipView


class Unit(NamedTuple):
    """What is owned and moved: a slot (``kind="slot"``), or a pinned workspace (``"pin"``)."""

    kind: str
    key: int | str

    @classmethod
    def slot(cls, slot: int) -> Unit:
        """The unit of one slot."""
        return cls("slot", slot)

    @classmethod
    def pin(cls, workspace_id: str) -> Unit:
        """The unit of one pinned workspace."""
        return cls("pin", workspace_id)

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"


class SlotTable:
    """The slots and pinned workspaces this node owns (see the module docstring)."""

    def __init__(self, *, metrics: NodeMetrics, readiness: Readiness | None = None) -> None:
        self._metrics = metrics
        self._readiness = readiness
        """Told when the lease is lost or back and when a drain starts or ends."""
        self._slots: dict[int, Owner] = {}
        self._pins: dict[str, Owner] = {}
        self._handing_off_slots: set[int] = set()
        self._handing_off_pins: set[str] = set()
        self._has_lease = True
        self._is_draining = False
        self._confirmed: set[int] = set()
        """Owned slots the view has shown as ours: their vanishing means the key is lost."""
        self._last_owner: dict[int, str] = {}
        """Each slot's holder as the view last showed it (for telling failovers apart)."""
        self._locks: dict[Unit, asyncio.Lock] = {}

    # -- reading --------------------------------------------------------------------------

    @property
    def has_lease(self) -> bool:
        """False between a lost lease and its re-grant: nothing is acquired or served."""
        return self._has_lease

    @property
    def is_draining(self) -> bool:
        """Placement skips this node (SIGTERM or an operator's drain)."""
        return self._is_draining

    def slots(self) -> dict[int, Owner]:
        """Every owned slot with the ownership it holds (a copy)."""
        return dict(self._slots)

    def pins(self) -> dict[str, Owner]:
        """Every owned pinned workspace with the ownership it holds (a copy)."""
        return dict(self._pins)

    def owner_of_slot(self, slot: int) -> Owner | None:
        """This node's ownership of ``slot``, None if it does not own it."""
        return self._slots.get(slot)

    def owner_of_pin(self, workspace_id: str) -> Owner | None:
        """This node's ownership of pinned ``workspace_id``, None if it does not own it."""
        return self._pins.get(workspace_id)

    def is_handing_off_slot(self, slot: int) -> bool:
        """Whether ``slot`` is being handed off (calls for it are refused meanwhile)."""
        return slot in self._handing_off_slots

    def is_handing_off_pin(self, workspace_id: str) -> bool:
        """Whether pinned ``workspace_id`` is being handed off."""
        return workspace_id in self._handing_off_pins

    def serving_slots(self) -> set[int]:
        """Owned slots not being handed off: what this node answers calls for."""
        if not self._has_lease:
            return set()
        return set(self._slots) - self._handing_off_slots

    def last_owner_of(self, slot: int) -> str | None:
        """Who the view last showed holding ``slot`` (None: never seen held)."""
        return self._last_owner.get(slot)

    # -- the unit steps -----------------------------------------------------------------

    @asynccontextmanager
    async def step(self, unit: Unit) -> AsyncIterator[None]:
        """Run one step on ``unit`` (acquire, handoff, restore) alone."""
        lock = self._locks.get(unit)
        if lock is None:
            lock = self._locks[unit] = asyncio.Lock()
        async with lock:
            yield

    def is_busy(self, unit: Unit) -> bool:
        """Whether a step on ``unit`` runs now."""
        lock = self._locks.get(unit)
        return lock is not None and lock.locked()

    async def settled(self, unit: Unit) -> bool:
        """Wait until no step on ``unit`` runs; whether there was one to wait for."""
        lock = self._locks.get(unit)
        if lock is None or not lock.locked():
            return False
        async with lock:
            return True

    # -- changing -----------------------------------------------------------------------

    def add_slot(self, slot: int, owner: Owner) -> None:
        """This node now owns ``slot`` under ``owner.epoch``."""
        self._slots[slot] = owner
        self._metrics.owned_slots(len(self._slots))

    def drop_slot(self, slot: int) -> None:
        """This node no longer owns ``slot`` (released, or its key was lost)."""
        self._slots.pop(slot, None)
        self._confirmed.discard(slot)
        self._metrics.owned_slots(len(self._slots))

    def begin_slot_handoff(self, slot: int) -> None:
        """Refuse calls for ``slot`` from now on: it is leaving."""
        self._handing_off_slots.add(slot)

    def end_slot_handoff(self, slot: int) -> None:
        """The handoff of ``slot`` is over (done or failed)."""
        self._handing_off_slots.discard(slot)

    def add_pin(self, workspace_id: str, owner: Owner) -> None:
        """This node now owns pinned ``workspace_id``."""
        self._pins[workspace_id] = owner

    def drop_pin(self, workspace_id: str) -> None:
        """This node no longer owns pinned ``workspace_id``."""
        self._pins.pop(workspace_id, None)

    def begin_pin_handoff(self, workspace_id: str) -> None:
        """Refuse calls for pinned ``workspace_id`` from now on: it is leaving."""
        self._handing_off_pins.add(workspace_id)

    def end_pin_handoff(self, workspace_id: str) -> None:
        """The handoff of pinned ``workspace_id`` is over."""
        self._handing_off_pins.discard(workspace_id)

    def set_draining(self, is_draining: bool) -> None:
        """Start (or stop) draining: placement gives this node nothing while it drains."""
        self._is_draining = is_draining
        if self._readiness is not None:
            self._readiness.draining(is_draining)

    def lease_lost(self) -> None:
        """The lease is lost or about to be: forget every ownership at once (the keys were
        bound to that lease) and serve nothing until :meth:`lease_back`."""
        self._has_lease = False
        if self._readiness is not None:
            self._readiness.lease(False)
        self._slots.clear()
        self._pins.clear()
        self._confirmed.clear()
        self._metrics.owned_slots(0)

    def lease_back(self) -> None:
        """The lease is healthy again: acquiring may start over."""
        self._has_lease = True
        if self._readiness is not None:
            self._readiness.lease(True)

    def note_view(self, view: OwnershipView) -> list[int]:
        """Record who the view says holds each slot; return the owned slots whose key is lost
        (deleted after the view confirmed it, or taken under a newer epoch): they must be
        fenced."""
        lost: list[int] = []
        for slot, owner in view.slot_owners().items():
            self._last_owner[slot] = owner.node_id
        for slot, mine in self._slots.items():
            holder = view.owner_of_slot(slot)
            if holder is not None and holder.epoch == mine.epoch:
                self._confirmed.add(slot)
            elif (holder is None and slot in self._confirmed) or (
                holder is not None and holder.epoch > mine.epoch
            ):
                lost.append(slot)
        return lost
