"""Moves: the steps that change what this node owns — acquire, hand off, release, fence — and
the restores and stops of sessions that go with them.

The reconciler schedules them (and a call may acquire an empty slot on demand); each runs
under its unit's step lock in the slot table, so an acquire, its restores and a handoff of
one unit never interleave. A handoff is one fixed sequence: refuse calls for the unit, stop its
sessions gracefully (state flushed, no logout), release the key. It never waits on the accounts
DB: it only asks the store to write its rows soon, and every session's stored meta carries its
move count to the next owner, so the rows count each move once whichever node's rows land first
(or if the old node's never do).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import aetcd
import structlog

from node.budget import WorkBudget
from node.catalog import CatalogBook
from node.heartbeat import Heartbeat
from node.manager import SessionManager
from node.metrics import NodeMetrics
from node.placement import NodePlacement
from node.serving import ServingCheck, moving
from node.slot_table import SlotTable, Unit
from registry import (
    ClusterKeys,
    MeshError,
    Owner,
    OwnershipView,
    acquire_pinned,
    acquire_slot,
    release_pinned,
    release_slot,
    slot_of,
    takeover_epoch,
)
from registry.accounts import AccountStore

_log = structlog.get_logger(__name__)

ON_DEMAND_TIMEOUT_SECONDS = 5.0
"""How long a call waits for an acquire it caused (or a step in progress on its unit) before
answering UNAVAILABLE with a retry hint."""


class Moves:
    """Acquires, hands off, releases and fences this node's units (see the module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        etcd: aetcd.Client,
        keys: ClusterKeys,
        slots: SlotTable,
        view: OwnershipView,
        placement: NodePlacement,
        serving: ServingCheck,
        catalog: CatalogBook,
        manager: SessionManager,
        heartbeat: Heartbeat,
        metrics: NodeMetrics,
        accounts: AccountStore | None,
        budget: WorkBudget,
    ) -> None:
        self._budget = budget
        self._node_id = node_id
        self._etcd = etcd
        self._keys = keys
        self._slots = slots
        self._view = view
        self._placement = placement
        self._serving = serving
        self._catalog = catalog
        self._manager = manager
        self._heartbeat = heartbeat
        self._metrics = metrics
        self._accounts = accounts
        self._on_demand: set[asyncio.Task[None]] = set()

    # -- on demand ----------------------------------------------------------------------

    async def acquire_on_demand(self, unit: Unit) -> None:
        """Acquire ``unit`` for a call that landed on it first; ``Unavailable`` (retryable) if
        that takes longer than ``ON_DEMAND_TIMEOUT_SECONDS``."""
        step = (
            self.acquire_slot(int(unit.key))
            if unit.kind == "slot"
            else self.acquire_pin(str(unit.key))
        )
        await self._shielded(step, unit)

    async def wait_settled(self, unit: Unit) -> bool:
        """Wait (bounded) for a step in progress on ``unit``, such as the restore of its
        sessions; whether there was one. ``Unavailable`` (retryable) past the bound."""
        if not self._slots.is_busy(unit):
            return False
        try:
            async with asyncio.timeout(ON_DEMAND_TIMEOUT_SECONDS):
                return await self._slots.settled(unit)
        except TimeoutError:
            raise moving(unit) from None  # still restoring or moving: never an INTERNAL

    async def _shielded(self, step: Coroutine[Any, Any, None], unit: Unit) -> None:
        # A task, shielded: a caller giving up must not cancel an acquire halfway through.
        task = asyncio.create_task(step, name=f"on-demand-{unit.kind}-{unit.key}")
        self._on_demand.add(task)
        task.add_done_callback(self._on_demand.discard)
        try:
            async with asyncio.timeout(ON_DEMAND_TIMEOUT_SECONDS):
                await asyncio.shield(task)
        except TimeoutError:
            raise moving(unit) from None

    # -- slots --------------------------------------------------------------------------

    async def acquire_slot(self, slot: int) -> None:
        """Take ``owners/<slot>`` if it is free and restore the slot's workspaces."""
        slots = self._slots
        async with slots.step(Unit.slot(slot)):
            if slots.owner_of_slot(slot) is not None or not slots.has_lease:
                return
            previous = slots.last_owner_of(slot)
            won, holder = await acquire_slot(
                self._etcd,
                self._keys,
                slot,
                node_id=self._node_id,
                lease_id=self._heartbeat.lease_id,
            )
            if not won or holder is None:
                return
            slots.add_slot(slot, holder)
            is_failover = previous not in (None, self._node_id) and not self._placement.is_alive(
                str(previous)
            )
            self._metrics.acquired(is_failover=is_failover)
            workspaces = await self._catalog.read_slot(slot)
            wanted = [ws for ws in sorted(workspaces) if self._serving.wants(ws)]
            restored = await self._manager.restore_workspaces(wanted, epoch=holder.epoch)
            self._catalog.mark_served(wanted)
            _log.info(
                "slot_acquired",
                node_id=self._node_id,
                slot=slot,
                epoch=holder.epoch,
                workspaces=len(wanted),
                restored=restored,
                failover=is_failover,
            )

    async def hand_off_slot(self, slot: int) -> None:
        """Refuse calls for the slot, stop its sessions (flushed, no logout), release the key."""
        slots = self._slots
        async with slots.step(Unit.slot(slot)), self._budget.background():
            owner = slots.owner_of_slot(slot)
            if owner is None:
                return
            slots.begin_slot_handoff(slot)
            leaving = self._catalog.served_in_slot(slot, excluding=set(slots.pins()))
            try:
                await self._manager.stop_workspaces(leaving)
                self._catalog.mark_unserved(leaving)
                self._write_accounts_soon()
                await release_slot(self._etcd, self._keys, slot, owner)
                slots.drop_slot(slot)
                self._catalog.forget_slot(slot)
                self._metrics.handed_off()
                _log.info("slot_handed_off", node_id=self._node_id, slot=slot)
            except asyncio.CancelledError:
                # A shutdown's deadline cut it short: the slot keeps refusing calls (its
                # sessions may be stopped) until the lease goes, which releases the key.
                raise
            except BaseException:
                # The key is still ours (etcd refused the release): serve the slot again,
                # with its sessions — never an owned slot answering NOT_FOUND for them.
                if slots.owner_of_slot(slot) is not None:
                    with contextlib.suppress(Exception):
                        await self._manager.restore_workspaces(leaving, epoch=owner.epoch)
                        self._catalog.mark_served(leaving)
                slots.end_slot_handoff(slot)
                raise
            slots.end_slot_handoff(slot)

    async def release_stale_slot(self, slot: int, holder: Owner) -> None:
        """Release a key held under this node's name that this node does not run (left by a
        fence or an earlier incarnation of this node), so placement can place it afresh."""
        async with self._slots.step(Unit.slot(slot)):
            if self._slots.owner_of_slot(slot) is not None or holder.node_id != self._node_id:
                return
            if await release_slot(self._etcd, self._keys, slot, holder):
                _log.info("stale_slot_released", node_id=self._node_id, slot=slot)

    def _write_accounts_soon(self) -> None:
        # Not a flush: a handoff must not wait on the DB (down, blackholed or just slow). Asked
        # now, this node's rows usually land before the next owner's all the same.
        if self._accounts is not None:
            self._accounts.write_soon()

    # -- pinned workspaces --------------------------------------------------------------

    async def acquire_pin(self, workspace_id: str) -> None:
        """Take ``pinned-owners/<ws>`` (the pin names this node) and restore its sessions."""
        slots = self._slots
        async with slots.step(Unit.pin(workspace_id)):
            if slots.owner_of_pin(workspace_id) is not None or not slots.has_lease:
                return
            if self._view.pin_of(workspace_id) != self._node_id:
                return
            won, holder = await acquire_pinned(
                self._etcd,
                self._keys,
                workspace_id,
                node_id=self._node_id,
                lease_id=self._heartbeat.lease_id,
            )
            if not won or holder is None:
                return
            slots.add_pin(workspace_id, holder)
            self._metrics.acquired(is_failover=False)
            await self._manager.restore_workspaces([workspace_id], epoch=holder.epoch)
            self._catalog.mark_served([workspace_id])
            _log.info("pin_acquired", node_id=self._node_id, workspace_id=workspace_id)

    async def hand_off_pin(self, workspace_id: str) -> None:
        """Stop a pinned workspace's sessions and release ``pinned-owners/<ws>``."""
        slots = self._slots
        async with slots.step(Unit.pin(workspace_id)), self._budget.background():
            owner = slots.owner_of_pin(workspace_id)
            if owner is None:
                return
            slots.begin_pin_handoff(workspace_id)
            try:
                await self._manager.stop_workspaces({workspace_id})
                self._catalog.mark_unserved({workspace_id})
                self._write_accounts_soon()
                await release_pinned(self._etcd, self._keys, workspace_id, owner)
                slots.drop_pin(workspace_id)
                self._metrics.handed_off()
                _log.info("pin_handed_off", node_id=self._node_id, workspace_id=workspace_id)
            except asyncio.CancelledError:
                raise  # as for a slot: refusing calls until the lease goes
            except BaseException:
                if slots.owner_of_pin(workspace_id) is not None:  # still ours: serve it again
                    with contextlib.suppress(Exception):
                        await self._manager.restore_workspaces([workspace_id], epoch=owner.epoch)
                        self._catalog.mark_served({workspace_id})
                slots.end_pin_handoff(workspace_id)
                raise
            slots.end_pin_handoff(workspace_id)

    async def converge_workspaces(self) -> None:
        """Stop workspaces this node should no longer run (a pin elsewhere appeared) and start
        those it should run but does not (a pin went away)."""
        serving, slots = self._serving, self._slots
        for workspace_id in sorted(self._catalog.served()):
            if serving.wants(workspace_id) or slots.owner_of_pin(workspace_id) is not None:
                continue
            async with slots.step(Unit.slot(self._slot_of(workspace_id))):
                if not serving.wants(workspace_id):
                    await self._manager.stop_workspaces({workspace_id})
                    self._catalog.mark_unserved({workspace_id})
        for slot, workspaces in self._catalog.unserved_by_slot().items():
            for workspace_id in sorted(workspaces):
                if not serving.wants(workspace_id):
                    continue
                async with slots.step(Unit.slot(slot)):
                    owner = slots.owner_of_slot(slot)
                    if owner is None or not serving.wants(workspace_id):
                        continue
                    try:
                        # Its files name the pinned owner's epoch, which this slot's key may
                        # predate: the sessions are fenced by a revision newer than both.
                        fence_epoch = await takeover_epoch(self._etcd, self._keys, workspace_id)
                        if fence_epoch is None:
                            continue  # the pinned owner still holds it: the next pass
                        await self._manager.restore_workspaces(
                            [workspace_id],
                            epoch=owner.epoch,
                            fence_epoch=max(fence_epoch, owner.epoch),
                        )
                    except MeshError as error:  # one workspace must not stop the pass
                        _log.error("converge_failed", workspace_id=workspace_id, error=error)
                        continue
                    self._catalog.mark_served([workspace_id])

    def _slot_of(self, workspace_id: str) -> int:
        return slot_of(workspace_id, self._placement.ring.slot_count)

    # -- fencing ------------------------------------------------------------------------

    async def fence_slots(self, lost: list[int]) -> None:
        """Stop the sessions of slots whose key this node lost, at once and without release."""
        slots = self._slots
        fenced = [slot for slot in lost if not slots.is_handing_off_slot(slot)]
        for slot in fenced:
            leaving = self._catalog.served_in_slot(slot, excluding=set(slots.pins()))
            slots.drop_slot(slot)
            self._catalog.forget_slot(slot)
            self._catalog.mark_unserved(leaving)
            await self._manager.stop_workspaces(leaving)
        if fenced:
            self._metrics.fenced()
            _log.error("slots_fenced", node_id=self._node_id, slots=len(fenced))

    async def fence_all(self) -> None:
        """Stop every session now: the lease is lost or about to be (the slot table already
        forgot every ownership, see :meth:`SlotTable.lease_lost`)."""
        self._catalog.forget_all()
        self._metrics.fenced()
        await self._manager.stop_all_sessions()
        _log.error("node_fenced", node_id=self._node_id)
