"""The reconciler: a level-triggered loop that makes "slots I own" match "slots placement gives
me", on every node.

Each pass compares the owners map (watch-fed) with placement: it acquires orphan slots whose
target is this node and that hold workspaces (the catalog; an empty slot is acquired on demand
by its first call), hands off owned slots whose target is another live, active node, keeps
slots nobody else can take, does the same for pinned workspaces, and fences slots whose key
it lost. Watches make it fast (a change wakes it at once, coalesced); the periodic pass makes
it correct after missed events, compaction or restarts. At most ``max_moves_in_flight``
acquires and handoffs run at once, so a failover or a cold start does not pin the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from node.ownership import NodeOwnership
from registry.background import stop_task
from registry.membership import NodeRecord
from registry.placement import place_slot
from registry.routing import RoutingTable

_log = logging.getLogger(__name__)

_Unit = tuple[str, object]


def _placement_key(nodes: dict[str, NodeRecord]) -> tuple[tuple[str, bool, bool], ...]:
    # What placement depends on besides the ring: who is active and who is full.
    return tuple(
        sorted(
            (node_id, record.is_active, record.load >= record.capacity)
            for node_id, record in nodes.items()
        )
    )


class Reconciler:
    """Drives a :class:`NodeOwnership` towards placement; see the module docstring."""

    def __init__(
        self,
        ownership: NodeOwnership,
        routing: RoutingTable,
        *,
        interval_seconds: float,
        max_moves_in_flight: int,
        publish_draining: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._ownership = ownership
        self._routing = routing
        self._interval_seconds = interval_seconds
        self._moves = asyncio.Semaphore(max_moves_in_flight)
        self._publish_draining = publish_draining
        self._wake = asyncio.Event()
        self._in_flight: dict[_Unit, asyncio.Task[None]] = {}
        self._targets_cache: dict[tuple[Any, ...], list[str | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._is_shutting_down = False
        self._is_stopped = False

    def poke(self, *_: object) -> None:
        """Run a pass soon (membership or ownership changed); many pokes make one pass."""
        self._wake.set()

    @property
    def moves_in_flight(self) -> int:
        """Acquires and handoffs running now."""
        return len(self._in_flight)

    def start(self) -> None:
        """Start the loop (returns at once)."""
        self._task = asyncio.create_task(self._loop(), name="reconciler")

    async def stop(self) -> None:
        """Stop the loop and wait for the moves in flight."""
        self._is_stopped = True
        self._wake.set()
        await stop_task(self._task)
        self._task = None
        await self.settle()

    async def settle(self) -> None:
        """Wait until no move is in flight."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _loop(self) -> None:
        # The flag as well as cancel(): a cancel that lands as the wait ends can be lost.
        while not self._is_stopped:
            await self._wait_for_wake(self._interval_seconds)
            if self._is_stopped:
                return
            try:
                await self.run_once()
            except Exception:
                # One failed pass (etcd blip) must not end the loop: the next one retries.
                _log.exception("reconcile_failed node_id=%s", self._ownership.node_id)

    async def _wait_for_wake(self, timeout_seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_seconds):
                await self._wake.wait()
        self._wake.clear()

    def _targets(self, *, for_owned: bool) -> list[str | None]:
        own = self._ownership
        nodes = own.nodes_for_placement(for_owned=for_owned)
        key = (for_owned, self._routing.version, _placement_key(nodes))
        targets = self._targets_cache.get(key)
        if targets is None:
            slots = range(self._routing.slot_count)
            targets = [place_slot(self._routing, nodes, slot) for slot in slots]
            kept = {old: value for old, value in self._targets_cache.items() if old[0] != for_owned}
            self._targets_cache = {key: targets, **kept}
        return targets

    async def run_once(self) -> None:
        """One pass: fence lost keys, follow drain requests, schedule acquires and handoffs."""
        own = self._ownership
        lost = own.note_view()
        if lost:
            await own.fence_slots(lost)
        if not own.has_lease:
            return
        await self._follow_drain_request()
        catalogued = await own.catalogued_slots()
        nodes = own.nodes_for_placement(for_owned=True)
        owners = own.view.slot_owners()
        owned_targets = self._targets(for_owned=True)
        orphan_targets = self._targets(for_owned=False)
        for slot in range(self._routing.slot_count):
            if ("slot", slot) in self._in_flight:
                continue
            if slot in own.owned:
                target = owned_targets[slot]
                record = nodes.get(target) if target is not None else None
                if target != own.node_id and record is not None and record.is_active:
                    self._schedule(("slot", slot), own.hand_off_slot(slot))
            elif slot not in owners:
                if slot in catalogued and orphan_targets[slot] == own.node_id:
                    self._schedule(("slot", slot), own.acquire_slot(slot))
            elif owners[slot].node_id == own.node_id:
                # Held under this node's name but not run here: left by a fence or an earlier
                # incarnation of this node. Release it so placement can place it afresh.
                self._schedule(("slot", slot), own.release_stale_slot(slot, owners[slot]))
        self._schedule_pins()
        if ("converge", None) not in self._in_flight:
            self._schedule(("converge", None), own.converge_workspaces())

    def _schedule_pins(self) -> None:
        own = self._ownership
        for workspace_id, node_id in own.view.pins().items():
            if (
                node_id == own.node_id
                and workspace_id not in own.owned_pinned
                and own.view.pinned_owner_of(workspace_id) is None
                and ("pin", workspace_id) not in self._in_flight
            ):
                self._schedule(("pin", workspace_id), own.acquire_pin(workspace_id))
        for workspace_id in list(own.owned_pinned):
            is_leaving = own.view.pin_of(workspace_id) != own.node_id
            if is_leaving and ("pin", workspace_id) not in self._in_flight:
                self._schedule(("pin", workspace_id), own.hand_off_pin(workspace_id))

    async def _follow_drain_request(self) -> None:
        own = self._ownership
        if self._is_shutting_down:
            return
        requested = own.view.is_drain_requested(own.node_id)
        if requested != own.is_draining:
            own.is_draining = requested
            _log.info("node_drain_requested node_id=%s draining=%s", own.node_id, requested)
            await self._publish_draining(requested)

    def _schedule(self, unit: _Unit, step: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            async with self._moves:
                await step

        task = asyncio.create_task(run(), name=f"move-{unit[0]}-{unit[1]}")
        self._in_flight[unit] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.pop(unit, None)
            if not finished.cancelled() and finished.exception() is not None:
                _log.warning(
                    "move_failed node_id=%s unit=%s error=%r",
                    self._ownership.node_id,
                    unit,
                    finished.exception(),
                )
            if unit[0] != "converge":  # converging never changes ownership: no busy loop
                self.poke()  # level-triggered: look again once a move ends

        task.add_done_callback(done)

    async def drain_for_shutdown(self, *, timeout_seconds: float) -> None:
        """Hand off every slot and pinned workspace that another node can take, then return
        (or at the deadline). The node is marked draining first, so placement skips it."""
        own = self._ownership
        self._is_shutting_down = True
        own.is_draining = True
        await self._publish_draining(True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while loop.time() < deadline:
            await self.run_once()
            await self.settle()
            if not self._has_takeable_work():
                return
            # Handoffs wait for a target that is active; look again when something changes.
            await self._wait_for_wake(max(0.0, deadline - loop.time()))
        _log.warning("drain_incomplete node_id=%s owned=%d", own.node_id, len(own.owned))

    def _has_takeable_work(self) -> bool:
        own = self._ownership
        if any(own.view.pin_of(ws) != own.node_id for ws in own.owned_pinned):
            return True
        nodes = own.nodes_for_placement(for_owned=True)
        targets = self._targets(for_owned=True)
        for slot in own.owned:
            target = targets[slot]
            if target is not None and target != own.node_id and target in nodes:
                return True
        return False
