"""The lease fence: a node without a healthy lease runs nothing.

The node's ownership keys are bound to its etcd lease, so once the lease could expire another
node may take them. One decision, :meth:`LeaseFence.evaluate`, says whether the lease is
healthy: granted, the one the node's ownerships were taken under, and refreshed within
``LEASE_FENCE_SHARE`` of its TTL. It runs on a clock (often enough that the fence lands well
before the TTL runs out) and whenever the registration reports a change (a loss etcd
confirmed, a new lease). When the lease turns unhealthy the fence fires once: the slot table
forgets every ownership at once (no call is admitted from then on) and every session stops.
When it is healthy again — under a new lease after a loss — the node may acquire again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from node.slot_table import SlotTable
from registry import NodeRegistration, call_safely, stop_task

_log = structlog.get_logger(__name__)

LEASE_FENCE_SHARE = 0.6
"""The node stops its sessions once this share of the lease TTL passed without a refresh:
well before the lease can expire and another node can take the keys."""
CHECKS_PER_LIMIT = 6
"""How many times the clock looks within one fencing limit."""


class LeaseFence:
    """Fences the node when its lease is no longer healthy (see the module docstring)."""

    def __init__(
        self,
        registration: NodeRegistration,
        slots: SlotTable,
        *,
        stop_everything: Callable[[], Coroutine[Any, Any, None]],
        on_recovered: Callable[[], None],
    ) -> None:
        self._registration = registration
        self._slots = slots
        self._limit_seconds = registration.lease_ttl_seconds * LEASE_FENCE_SHARE
        self._stop_everything = stop_everything
        self._on_recovered = on_recovered
        self._serving_lease_id = 0
        """The lease this node's ownerships are bound to (0: none yet)."""
        self._is_fenced = False
        self._task: asyncio.Task[None] | None = None
        self._stops: set[asyncio.Task[None]] = set()

    @property
    def limit_seconds(self) -> float:
        """How long the lease may go unrefreshed before the node fences itself."""
        return self._limit_seconds

    def start(self) -> None:
        """Take the registration's current lease as the one served under; start the clock."""
        self._serving_lease_id = self._registration.lease_id
        self._task = asyncio.create_task(self._clock(), name="lease-fence")

    async def stop(self) -> None:
        """Stop the clock (and wait for a fence in progress)."""
        await stop_task(self._task)
        self._task = None
        if self._stops:
            await asyncio.gather(*self._stops, return_exceptions=True)

    def lease_changed(self) -> None:
        """The registration lost its lease or got a new one: decide now."""
        self.evaluate()

    def evaluate(self) -> None:
        """Fence the node if its lease is not healthy now; lift the fence once it is again."""
        if self._task is None:
            return  # not started yet, or stopped: the node is not serving under a lease
        registration = self._registration
        age_seconds = asyncio.get_running_loop().time() - registration.last_refreshed_at
        is_healthy = (
            registration.has_lease
            and age_seconds <= self._limit_seconds
            and (self._is_fenced or registration.lease_id == self._serving_lease_id)
        )
        if is_healthy:
            if self._is_fenced:
                self._is_fenced = False
                self._serving_lease_id = registration.lease_id
                self._slots.lease_back()
                _log.info(
                    "lease_fence_lifted",
                    node_id=registration.record.node_id,
                    lease_id=registration.lease_id,
                )
                call_safely(self._on_recovered)
            return
        if self._is_fenced:
            return
        self._is_fenced = True
        _log.error(
            "lease_fence",
            node_id=registration.record.node_id,
            unrefreshed_seconds=round(age_seconds, 2),
            has_lease=registration.has_lease,
        )
        self._slots.lease_lost()  # from here no call is admitted
        task = asyncio.create_task(self._stop_everything(), name="fence-all")
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def _clock(self) -> None:
        while True:
            await asyncio.sleep(self._limit_seconds / CHECKS_PER_LIMIT)
            self.evaluate()
