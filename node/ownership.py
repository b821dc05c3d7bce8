"""This node's share of the ownership: the slots and pinned workspaces it holds, the check every
call passes, and the acquire / handoff / fence steps the reconciler drives.

A workspace is served by the holder of ``pinned-owners/<ws>`` when it is pinned, else by the
holder of ``owners/<slot>``. Every step on one slot (or one pinned workspace) runs under that
unit's lock, so an acquire, its restores and a handoff never interleave.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import aetcd

from node.catalog import CatalogCounts
from node.manager import SessionManager
from node.metrics import NodeMetrics
from registry.accounts import AccountStore
from registry.errors import NotOwner, Unavailable
from registry.keys import ClusterKeys
from registry.membership import DRAINING, MembershipWatcher, NodeRecord
from registry.ownership import (
    Owner,
    OwnershipView,
    acquire_pinned,
    acquire_slot,
    catalog_of,
    catalogued_slots,
    release_pinned,
    release_slot,
)
from registry.placement import place_slot
from registry.routing import RoutingTable
from registry.slots import slot_of

_log = logging.getLogger(__name__)

MOVING_RETRY_AFTER_MS = 100
"""Retry hint while a slot or workspace is handed off or acquired: the gateway retries."""
ON_DEMAND_TIMEOUT_SECONDS = 5.0
"""How long a call waits for an acquire or handoff it caused before answering UNAVAILABLE."""

_Unit = tuple[str, object]


def _moving(what: str) -> Unavailable:
    return Unavailable(f"{what} is moving", retry_after_ms=MOVING_RETRY_AFTER_MS)


class NodeOwnership:
    """The slots and pinned workspaces this node holds, and the serving check."""

    def __init__(
        self,
        *,
        node_id: str,
        etcd: aetcd.Client,
        keys: ClusterKeys,
        view: OwnershipView,
        watcher: MembershipWatcher,
        routing: RoutingTable,
        manager: SessionManager,
        metrics: NodeMetrics,
        lease_id: Callable[[], int],
        accounts: AccountStore | None = None,
    ) -> None:
        self.node_id = node_id
        self._etcd = etcd
        self._keys = keys
        self.view = view
        self._watcher = watcher
        self._routing = routing
        self._manager = manager
        self._metrics = metrics
        self._lease_id = lease_id
        self._accounts = accounts
        self.owned: dict[int, Owner] = {}
        self.owned_pinned: dict[str, Owner] = {}
        self.handing_off: set[int] = set()
        self.handing_off_pinned: set[str] = set()
        self.is_draining = False
        """Placement skips this node (SIGTERM or an operator's drain)."""
        self.has_lease = True
        """False between a lost lease and its re-grant: nothing is acquired or served."""
        self._catalog: dict[int, set[str]] = {}
        """The workspaces of each owned slot (read at acquire, kept up to date by creates)."""
        self.catalog_counts = CatalogCounts(
            etcd,
            keys,
            slot_count=routing.slot_count,
            session_count=manager.session_count,
            node_id=node_id,
        )
        """The session counts this node writes to the catalog."""
        self._served: set[str] = set()
        """Workspaces whose stored sessions run here (restored or created)."""
        self._confirmed: set[int] = set()
        """Owned slots the view has shown as ours: their vanishing means the key is lost."""
        self._last_owner: dict[int, str] = {}
        self._locks: dict[_Unit, asyncio.Lock] = {}
        self._steps: set[asyncio.Task[None]] = set()
        manager.set_admission(self.admits)

    # -- placement ----------------------------------------------------------------------

    def nodes_for_placement(
        self, *, for_owned: bool, excluding_me: bool = False
    ) -> dict[str, NodeRecord]:
        """The live nodes as placement should see them from here.

        This node counts as draining while it drains. For slots it already owns its own load
        is ignored: being full keeps what it has, it only stops taking more."""
        nodes = self._watcher.nodes()
        me = nodes.get(self.node_id)
        if me is not None:
            if excluding_me or self.is_draining:
                nodes[self.node_id] = replace(me, state=DRAINING)
            elif for_owned:
                nodes[self.node_id] = replace(me, load=0)
        return nodes

    def target_of(self, slot: int, *, for_owned: bool) -> str | None:
        """Where placement puts ``slot`` now."""
        nodes = self.nodes_for_placement(for_owned=for_owned)
        return place_slot(self._routing, nodes, slot)

    def _hint(self, node_id: str) -> str:
        record = self._watcher.nodes().get(node_id)
        return f"{node_id}@{record.address}" if record is not None else ""

    def is_alive(self, node_id: str) -> bool:
        """Whether ``node_id`` is a live member now."""
        return node_id in self._watcher.nodes()

    # -- the serving check --------------------------------------------------------------

    def admits(self, workspace_id: str) -> bool:
        """Whether this node serves ``workspace_id`` right now (no await: for the manager)."""
        if not self.has_lease:
            return False
        if workspace_id in self.owned_pinned:
            return workspace_id not in self.handing_off_pinned
        slot = slot_of(workspace_id, self._routing.slot_count)
        return slot in self.owned and slot not in self.handing_off

    async def authorize(self, workspace_id: str) -> int:
        """The owner epoch under which this node serves ``workspace_id``; acquires on demand.

        Raises ``NotOwner`` (with the owner's ``node_id@address``) when another node serves
        it, ``Unavailable`` with a retry hint while it moves or nobody can take it."""
        if not self.has_lease:
            raise Unavailable(f"node {self.node_id} has no lease", retry_after_ms=200)
        pin = self.view.pin_of(workspace_id)
        if pin is not None:
            return await self._authorize_pinned(workspace_id, pin)
        pinned_holder = self.view.pinned_owner_of(workspace_id)
        if pinned_holder is not None and pinned_holder.node_id != self.node_id:
            raise _moving(f"workspace {workspace_id} (unpinned)")  # its pinned owner lets go
        if workspace_id in self.owned_pinned:
            raise _moving(f"workspace {workspace_id} (unpinned)")
        slot = slot_of(workspace_id, self._routing.slot_count)
        if slot in self.handing_off:
            raise _moving(f"slot {slot}")
        owner = self.owned.get(slot)
        if owner is not None:
            target = self.target_of(slot, for_owned=True)
            if target is None or target == self.node_id or not self.is_alive(target):
                await self._wait_unlocked(("slot", slot))  # a restore in progress finishes
                return self._epoch_of_slot(slot)
            # Placement moved it: hand off now rather than serve a slot that is leaving.
            await self._on_demand(self.hand_off_slot(slot))
        holder = self.view.owner_of_slot(slot)
        if holder is not None and holder.node_id != self.node_id:
            raise NotOwner(
                f"slot {slot} belongs to {holder.node_id}", owner=self._hint(holder.node_id)
            )
        target = self.target_of(slot, for_owned=False)
        if target == self.node_id and not self.is_draining:
            await self._on_demand(self.acquire_slot(slot))
            if slot in self.owned:
                return self._epoch_of_slot(slot)
            raise _moving(f"slot {slot}")
        if target is None:
            raise Unavailable(f"no node can take slot {slot} now", retry_after_ms=500)
        raise NotOwner(f"slot {slot} goes to {target}", owner=self._hint(target))

    async def _authorize_pinned(self, workspace_id: str, pin: str) -> int:
        if pin != self.node_id:
            raise NotOwner(f"workspace {workspace_id} is pinned to {pin}", owner=self._hint(pin))
        if workspace_id in self.handing_off_pinned:
            raise _moving(f"workspace {workspace_id}")
        if workspace_id not in self.owned_pinned:
            await self._on_demand(self.acquire_pin(workspace_id))
        else:
            await self._wait_unlocked(("pin", workspace_id))
        owner = self.owned_pinned.get(workspace_id)
        if owner is None:
            raise _moving(f"workspace {workspace_id}")
        return owner.epoch

    def _epoch_of_slot(self, slot: int) -> int:
        owner = self.owned.get(slot)
        if owner is None or slot in self.handing_off:
            raise _moving(f"slot {slot}")
        return owner.epoch

    async def _on_demand(self, step: Coroutine[Any, Any, None]) -> None:
        # A task, shielded: a caller giving up must not cancel an acquire halfway through.
        task = asyncio.create_task(step)
        self._steps.add(task)
        task.add_done_callback(self._steps.discard)
        try:
            async with asyncio.timeout(ON_DEMAND_TIMEOUT_SECONDS):
                await asyncio.shield(task)
        except TimeoutError:
            raise _moving("the workspace") from None

    async def _wait_unlocked(self, unit: _Unit) -> None:
        lock = self._locks.get(unit)
        if lock is not None and lock.locked():
            try:
                async with asyncio.timeout(ON_DEMAND_TIMEOUT_SECONDS):
                    async with lock:
                        pass
            except TimeoutError:
                # Still restoring or moving: a retryable UNAVAILABLE, never an INTERNAL.
                raise _moving(f"{unit[0]} {unit[1]}") from None

    def _lock(self, unit: _Unit) -> asyncio.Lock:
        lock = self._locks.get(unit)
        if lock is None:
            lock = self._locks[unit] = asyncio.Lock()
        return lock

    # -- the catalog --------------------------------------------------------------------

    async def note_sessions(self, workspace_id: str) -> None:
        """Keep ``catalog/<slot>/<ws>`` in step after a create or delete (not per message)."""
        self._served.add(workspace_id)
        slot = slot_of(workspace_id, self._routing.slot_count)
        self._catalog.setdefault(slot, set()).add(workspace_id)
        await self.catalog_counts.note(workspace_id)

    async def catalogued_slots(self) -> set[int]:
        """The slots that hold at least one workspace (one etcd range read).

        Only those need an owner ahead of calls: an empty slot is acquired on demand by the
        first call that lands on it, so a cold start does not write 4,096 keys."""
        return await catalogued_slots(self._etcd, self._keys)

    # -- acquire, hand off, fence -------------------------------------------------------

    def workspace_wanted(self, workspace_id: str) -> bool:
        """Whether this node should run ``workspace_id``'s sessions, given what it owns."""
        if workspace_id in self.owned_pinned:
            return workspace_id not in self.handing_off_pinned
        if self.view.pin_of(workspace_id) is not None:
            return False
        holder = self.view.pinned_owner_of(workspace_id)
        if holder is not None and holder.node_id != self.node_id:
            return False  # wait until the previous pinned owner released it
        slot = slot_of(workspace_id, self._routing.slot_count)
        return slot in self.owned and slot not in self.handing_off

    async def acquire_slot(self, slot: int) -> None:
        """Take ``owners/<slot>`` if it is free and restore the slot's workspaces."""
        async with self._lock(("slot", slot)):
            if slot in self.owned or not self.has_lease:
                return
            previous = self._last_owner.get(slot)
            won, holder = await acquire_slot(
                self._etcd, self._keys, slot, node_id=self.node_id, lease_id=self._lease_id()
            )
            if not won or holder is None:
                return
            self.owned[slot] = holder
            self._metrics.owned_slots(len(self.owned))
            is_failover = previous not in (None, self.node_id) and not self.is_alive(str(previous))
            self._metrics.acquired(is_failover=is_failover)
            workspaces = set(await catalog_of(self._etcd, self._keys, slot))
            self._catalog[slot] = workspaces | self._catalog.get(slot, set())
            wanted = [ws for ws in sorted(workspaces) if self.workspace_wanted(ws)]
            restored = await self._manager.restore_workspaces(wanted, epoch=holder.epoch)
            self._served.update(wanted)
            _log.info(
                "slot_acquired node_id=%s slot=%d epoch=%d workspaces=%d restored=%d failover=%s",
                self.node_id,
                slot,
                holder.epoch,
                len(wanted),
                restored,
                is_failover,
            )

    async def hand_off_slot(self, slot: int) -> None:
        """Refuse calls for the slot, stop its sessions (flushed, no logout), release the key."""
        async with self._lock(("slot", slot)):
            owner = self.owned.get(slot)
            if owner is None:
                return
            self.handing_off.add(slot)
            try:
                leaving = {
                    ws
                    for ws in self._served
                    if slot_of(ws, self._routing.slot_count) == slot and ws not in self.owned_pinned
                }
                await self._manager.stop_workspaces(leaving)
                self._served -= leaving
                await self._flush_accounts()
                await release_slot(self._etcd, self._keys, slot, owner)
                self._drop_slot(slot)
                self._metrics.handed_off()
                _log.info("slot_handed_off node_id=%s slot=%d", self.node_id, slot)
            finally:
                self.handing_off.discard(slot)

    async def release_stale_slot(self, slot: int, holder: Owner) -> None:
        """Release a key held under this node's name that this node does not run."""
        async with self._lock(("slot", slot)):
            if slot in self.owned or holder.node_id != self.node_id:
                return
            if await release_slot(self._etcd, self._keys, slot, holder):
                _log.info("stale_slot_released node_id=%s slot=%d", self.node_id, slot)

    async def _flush_accounts(self) -> None:
        # This node's queued DB rows land before the next owner's: the order of assignments
        # (and so previous_node_id and instance_migration_count) follows the real moves.
        if self._accounts is not None:
            await self._accounts.flush()

    def _drop_slot(self, slot: int) -> None:
        self.owned.pop(slot, None)
        self._catalog.pop(slot, None)
        self._confirmed.discard(slot)
        self._metrics.owned_slots(len(self.owned))

    async def acquire_pin(self, workspace_id: str) -> None:
        """Take ``pinned-owners/<ws>`` (the pin names this node) and restore its sessions."""
        async with self._lock(("pin", workspace_id)):
            if workspace_id in self.owned_pinned or not self.has_lease:
                return
            if self.view.pin_of(workspace_id) != self.node_id:
                return
            won, holder = await acquire_pinned(
                self._etcd,
                self._keys,
                workspace_id,
                node_id=self.node_id,
                lease_id=self._lease_id(),
            )
            if not won or holder is None:
                return
            self.owned_pinned[workspace_id] = holder
            self._metrics.acquired(is_failover=False)
            await self._manager.restore_workspaces([workspace_id], epoch=holder.epoch)
            self._served.add(workspace_id)
            _log.info("pin_acquired node_id=%s workspace_id=%s", self.node_id, workspace_id)

    async def hand_off_pin(self, workspace_id: str) -> None:
        """Stop a pinned workspace's sessions and release ``pinned-owners/<ws>``."""
        async with self._lock(("pin", workspace_id)):
            owner = self.owned_pinned.get(workspace_id)
            if owner is None:
                return
            self.handing_off_pinned.add(workspace_id)
            try:
                await self._manager.stop_workspaces({workspace_id})
                self._served.discard(workspace_id)
                await self._flush_accounts()
                await release_pinned(self._etcd, self._keys, workspace_id, owner)
                del self.owned_pinned[workspace_id]
                self._metrics.handed_off()
                _log.info("pin_handed_off node_id=%s workspace_id=%s", self.node_id, workspace_id)
            finally:
                self.handing_off_pinned.discard(workspace_id)

    async def converge_workspaces(self) -> None:
        """Stop workspaces this node should no longer run (a pin elsewhere appeared) and start
        those it should run but does not (a pin went away)."""
        for workspace_id in sorted(self._served):
            if not self.workspace_wanted(workspace_id) and workspace_id not in self.owned_pinned:
                slot = slot_of(workspace_id, self._routing.slot_count)
                async with self._lock(("slot", slot)):
                    if not self.workspace_wanted(workspace_id):
                        await self._manager.stop_workspaces({workspace_id})
                        self._served.discard(workspace_id)
        for slot, workspaces in list(self._catalog.items()):
            for workspace_id in sorted(workspaces - self._served):
                if not self.workspace_wanted(workspace_id):
                    continue
                async with self._lock(("slot", slot)):
                    owner = self.owned.get(slot)
                    if owner is None or not self.workspace_wanted(workspace_id):
                        continue
                    await self._manager.restore_workspaces(
                        [workspace_id], epoch=owner.epoch, is_takeover=True
                    )
                    self._served.add(workspace_id)

    def note_view(self) -> list[int]:
        """Record who the view says owns each slot; return owned slots whose key is lost
        (deleted or taken over), which must be fenced."""
        lost: list[int] = []
        for slot, owner in self.view.slot_owners().items():
            self._last_owner[slot] = owner.node_id
        for slot, mine in self.owned.items():
            holder = self.view.owner_of_slot(slot)
            if holder is not None and holder.epoch == mine.epoch:
                self._confirmed.add(slot)
            elif (holder is None and slot in self._confirmed) or (
                holder is not None and holder.epoch > mine.epoch
            ):
                lost.append(slot)
        return lost

    async def fence_slots(self, slots: list[int]) -> None:
        """Stop the sessions of slots whose key this node lost, at once and without release."""
        for slot in slots:
            if slot in self.handing_off:
                continue
            leaving = {
                ws
                for ws in self._served
                if slot_of(ws, self._routing.slot_count) == slot and ws not in self.owned_pinned
            }
            self._drop_slot(slot)
            self._served -= leaving
            await self._manager.stop_workspaces(leaving)
        if slots:
            self._metrics.fenced()
            _log.error("slots_fenced node_id=%s slots=%d", self.node_id, len(slots))

    async def fence_all(self) -> None:
        """Forget every key and stop every session now: the lease is lost or about to be."""
        self.has_lease = False
        self.owned.clear()
        self.owned_pinned.clear()
        self._catalog.clear()
        self.catalog_counts.forget_pending()
        self._confirmed.clear()
        self._served.clear()
        self._metrics.owned_slots(0)
        self._metrics.fenced()
        await self._manager.fence_all()
        _log.error("node_fenced node_id=%s", self.node_id)
