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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from node.moves import Moves
from node.placement import NodePlacement
from node.slot_table import SlotTable, Unit
from registry import NodeRecord, OwnershipView, place_slot, stop_task

_log = structlog.get_logger(__name__)

MIN_PASS_GAP_SECONDS = 0.05
"""Passes start at least this far apart, however often the loop is poked."""
_CONVERGE = Unit("converge", "")
"""The converge step, scheduled like a move but never changing ownership."""


def _placement_key(nodes: dict[str, NodeRecord]) -> tuple[tuple[str, bool, bool], ...]:
    # What placement depends on besides the ring: who is active and who is full.
    return tuple(
        sorted(
            (node_id, record.is_active, record.load >= record.capacity)
            for node_id, record in nodes.items()
        )
    )


CUT_MOVES_SECONDS = 0.5
"""How long moves cancelled at a shutdown's deadline get to unwind."""


class Reconciler:
    """Drives this node's ownership towards placement; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        slots: SlotTable,
        view: OwnershipView,
        placement: NodePlacement,
        moves: Moves,
        interval_seconds: float,
        max_moves_in_flight: int,
        publish_draining: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._node_id = node_id
        self._slots = slots
        self._view = view
        self._placement = placement
        self._moves = moves
        self._interval_seconds = interval_seconds
        self._move_limit = asyncio.Semaphore(max_moves_in_flight)
        self._publish_draining = publish_draining
        self._wake = asyncio.Event()
        self._in_flight: dict[Unit, asyncio.Task[None]] = {}
        self._targets_cache: dict[tuple[Any, ...], list[str | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._slot_units = [Unit.slot(slot) for slot in range(placement.ring.slot_count)]
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

    async def stop(self, *, timeout_seconds: float | None = None) -> None:
        """Stop the loop and wait for the moves in flight — at most ``timeout_seconds``:
        a move still running then is cancelled (a shutdown's deadline; the sessions it
        touched are stopped by the node's own stop, and the lease's end releases its keys)."""
        self._is_stopped = True
        self._wake.set()
        await stop_task(self._task)
        self._task = None
        if timeout_seconds is None:
            await self.settle()
            return
        if not await self._wait_moves(timeout_seconds):
            cut = list(self._in_flight.values())
            _log.warning("moves_cut_short", node_id=self._node_id, moves=len(cut))
            for task in cut:
                task.cancel()
            await asyncio.wait(cut, timeout=CUT_MOVES_SECONDS)

    async def _wait_moves(self, timeout_seconds: float) -> bool:
        """Wait (without cancelling them) until no move is in flight; whether that happened
        within ``timeout_seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while self._in_flight:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(list(self._in_flight.values()), timeout=left)
        return True

    async def settle(self) -> None:
        """Wait until no move is in flight."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        # The flag as well as cancel(): a cancel that lands as the wait ends can be lost.
        while not self._is_stopped:
            await self._wait_for_wake(self._interval_seconds)
            if self._is_stopped:
                return
            started_at = loop.time()
            try:
                await self.run_once()
            except Exception:
                # One failed pass (etcd blip) must not end the loop: the next one retries.
                _log.exception("reconcile_failed", node_id=self._node_id)
            # Pokes during a burst of moves (each ending move pokes) make one pass per gap.
            await asyncio.sleep(max(0.0, started_at + MIN_PASS_GAP_SECONDS - loop.time()))

    async def _wait_for_wake(self, timeout_seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_seconds):
                await self._wake.wait()
        self._wake.clear()

    def _targets(self, *, for_owned: bool) -> list[str | None]:
        nodes = self._placement.nodes(for_owned=for_owned)
        ring = self._placement.ring
        key = (for_owned, ring.version, _placement_key(nodes))
        targets = self._targets_cache.get(key)
        if targets is None:
            targets = [place_slot(ring, nodes, slot) for slot in range(ring.slot_count)]
            kept = {old: value for old, value in self._targets_cache.items() if old[0] != for_owned}
            self._targets_cache = {key: targets, **kept}
        return targets

    async def run_once(self) -> None:
        """One pass: fence lost keys, follow drain requests, schedule acquires and handoffs."""
        slots, moves = self._slots, self._moves
        lost = slots.note_view(self._view)
        if lost:
            await moves.fence_slots(lost)
        if not slots.has_lease:
            return
        await self._follow_drain_request()
        # Only catalogued slots need an owner ahead of calls: an empty slot is acquired on
        # demand by its first call, so a cold start does not write 4,096 keys.
        catalogued = self._view.catalogued_slots()
        nodes = self._placement.nodes(for_owned=True)
        owners = self._view.slot_owners()
        owned = slots.slots()
        owned_targets = self._targets(for_owned=True)
        orphan_targets = self._targets(for_owned=False)
        for slot, unit in enumerate(self._slot_units):
            if unit in self._in_flight:
                continue
            if slot in owned:
                target = owned_targets[slot]
                record = nodes.get(target) if target is not None else None
                if target != self._node_id and record is not None and record.is_active:
                    self._schedule(unit, moves.hand_off_slot(slot))
            elif slot not in owners:
                if slot in catalogued and orphan_targets[slot] == self._node_id:
                    self._schedule(unit, moves.acquire_slot(slot))
            elif owners[slot].node_id == self._node_id:
                # Held under this node's name but not run here: left by a fence or an earlier
                # incarnation of this node. Release it so placement can place it afresh.
                self._schedule(unit, moves.release_stale_slot(slot, owners[slot]))
        self._schedule_pins()
        if _CONVERGE not in self._in_flight:
            self._schedule(_CONVERGE, moves.converge_workspaces())

    def _schedule_pins(self) -> None:
        slots, view, moves = self._slots, self._view, self._moves
        for workspace_id, node_id in view.pins().items():
            unit = Unit.pin(workspace_id)
            if (
                node_id == self._node_id
                and slots.owner_of_pin(workspace_id) is None
                and view.pinned_owner_of(workspace_id) is None
                and unit not in self._in_flight
            ):
                self._schedule(unit, moves.acquire_pin(workspace_id))
        for workspace_id in slots.pins():
            unit = Unit.pin(workspace_id)
            is_leaving = view.pin_of(workspace_id) != self._node_id
            if is_leaving and unit not in self._in_flight:
                self._schedule(unit, moves.hand_off_pin(workspace_id))

    async def _follow_drain_request(self) -> None:
        if self._is_shutting_down:
            return
        requested = self._view.is_drain_requested(self._node_id)
        if requested != self._slots.is_draining:
            self._slots.set_draining(requested)
            _log.info("node_drain_requested", node_id=self._node_id, draining=requested)
            await self._publish_draining(requested)

    def _schedule(self, unit: Unit, step: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            async with self._move_limit:
                await step

        task = asyncio.create_task(run(), name=f"move-{unit.kind}-{unit.key}")
        self._in_flight[unit] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.pop(unit, None)
            if not finished.cancelled() and finished.exception() is not None:
                _log.warning(
                    "move_failed",
                    node_id=self._node_id,
                    unit=str(unit),
                    error=finished.exception(),
                )
            if unit != _CONVERGE:  # converging never changes ownership: no busy loop
                self.poke()  # level-triggered: look again once a move ends

        task.add_done_callback(done)

    async def drain_for_shutdown(self, *, timeout_seconds: float) -> None:
        """Hand off every slot and pinned workspace that another node can take, then return
        (or at the deadline). The node is marked draining first, so placement skips it."""
        self._is_shutting_down = True
        self._slots.set_draining(True)
        await self._publish_draining(True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):  # a pass cut short changes nothing
                while True:
                    await self.run_once()
                    # Not settle(): its gather would cancel the handoffs at the deadline.
                    await self._wait_moves(max(0.0, deadline - loop.time()))
                    if not self._has_takeable_work():
                        return
                    # Handoffs wait for a target that is active; look again on a change.
                    await self._wait_for_wake(max(0.0, deadline - loop.time()))
        _log.warning(
            "drain_incomplete",
            node_id=self._node_id,
            owned=len(self._slots.slots()),
            moves_in_flight=len(self._in_flight),
        )

    def _has_takeable_work(self) -> bool:
        if any(self._view.pin_of(ws) != self._node_id for ws in self._slots.pins()):
            return True
        nodes = self._placement.nodes(for_owned=True)
        targets = self._targets(for_owned=True)
        for slot in self._slots.slots():
            target = targets[slot]
            if target is not None and target != self._node_id and target in nodes:
                return True
        return False
