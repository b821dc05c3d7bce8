"""The lease fence: a node without a healthy lease runs nothing.

The node's ownership keys are bound to its etcd lease, so once the lease could expire another
node may take them. One decision, :meth:`LeaseFence.evaluate`, says whether the lease is
healthy: granted, the one the node's ownerships were taken under, and confirmed by etcd within
``LEASE_FENCE_SHARE`` of its TTL. The heartbeat thread (:mod:`node.heartbeat`) is its clock:
it asks for the decision whenever the lease is lost, given up, regained, or goes unconfirmed
past that limit — a busy main loop delays neither the refreshes nor that clock. When the lease
turns unhealthy the fence fires once: the slot table forgets every ownership at once (no call
is admitted from then on) and every session stops. When it is healthy again — under a new
lease after a loss — the node may acquire again.

Between the clock's ticks, every acknowledgement checks the lease itself
(:meth:`node.heartbeat.Heartbeat.is_confirmed`), so a call is never acknowledged under a lease
that may have expired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from node.heartbeat import Heartbeat
from node.slot_table import SlotTable
from registry import call_safely

_log = structlog.get_logger(__name__)

LEASE_FENCE_SHARE = 0.6
"""The node stops its sessions once this share of the lease TTL passed without a refresh:
well before the lease can expire and another node can take the keys."""


class LeaseFence:
    """Fences the node when its lease is no longer healthy (see the module docstring)."""

    def __init__(
        self,
        heartbeat: Heartbeat,
        slots: SlotTable,
        *,
        stop_everything: Callable[[], Coroutine[Any, Any, None]],
        on_recovered: Callable[[], None],
    ) -> None:
        self._heartbeat = heartbeat
        self._slots = slots
        self._stop_everything = stop_everything
        self._on_recovered = on_recovered
        self._serving_lease_id = 0
        """The lease this node's ownerships are bound to (0: none yet)."""
        self._is_started = False
        self._is_fenced = False
        self._stops: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Take the heartbeat's current lease as the one served under."""
        self._serving_lease_id = self._heartbeat.lease_id
        self._is_started = True

    async def stop(self) -> None:
        """Decide nothing more (and wait for a fence in progress)."""
        self._is_started = False
        if self._stops:
            await asyncio.gather(*self._stops, return_exceptions=True)

    def evaluate(self) -> None:
        """Fence the node if its lease is not healthy now; lift the fence once it is again."""
        if not self._is_started:
            return  # not started yet, or stopped: the node is not serving under a lease
        heartbeat = self._heartbeat
        is_healthy = (
            heartbeat.has_lease
            and heartbeat.is_confirmed()
            and (self._is_fenced or heartbeat.lease_id == self._serving_lease_id)
        )
        node_id = heartbeat.record.node_id
        if is_healthy:
            if self._is_fenced:
                self._is_fenced = False
                self._serving_lease_id = heartbeat.lease_id
                self._slots.lease_back()
                _log.info("lease_fence_lifted", node_id=node_id, lease_id=heartbeat.lease_id)
                call_safely(self._on_recovered)
            return
        if self._is_fenced:
            return
        self._is_fenced = True
        _log.error(
            "lease_fence",
            node_id=node_id,
            has_lease=heartbeat.has_lease,
            confirmed=heartbeat.is_confirmed(),
        )
        self._slots.lease_lost()  # from here no call is admitted
        task = asyncio.create_task(self._stop_everything(), name="fence-all")
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
