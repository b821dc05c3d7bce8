"""The heartbeat: the node's etcd lease, kept alive on a thread of its own.

A busy node is not a dead node. The lease keepalive runs on its own thread, with its own
event loop and its own etcd channel, so a saturated main loop (a burst of creates, a storm of
restores) cannot delay a refresh and make a healthy node lose its lease. The same thread is
the clock the lease fence judges by: it tells the main loop (thread-safely) when the lease is
lost, given up, regained, or has gone unconfirmed past the fencing limit.

The main loop's liveness is watched too: a tick on the main loop records its progress and
its lag (``sessionmesh_node_loop_lag_seconds``). While the loop has made progress within
``loop_stall_limit_seconds`` the heartbeat goes on; a loop hung longer than that gives the
lease up (revoked at once), so a wedged node's slots fail over like a dead node's — a zombie
that heartbeats forever would be worse than a dead node. When the loop runs again, a new
lease is taken and the node acquires work again through its reconciler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aetcd
import structlog

from node.metrics import NodeMetrics
from registry import (
    ClusterKeys,
    EtcdTls,
    NodeRecord,
    NodeRegistration,
    Unavailable,
    connect_etcd,
    stop_task,
)

_log = structlog.get_logger(__name__)
_T = TypeVar("_T")

TICK_SECONDS = 0.25
"""How often the main loop records its progress (and its lag)."""
CHECKS_PER_LIMIT = 6
"""How often, per fencing limit, the heartbeat thread looks at the lease's age."""
START_TIMEOUT_SECONDS = 15.0
"""How long starting the heartbeat (connect, grant, publish) may take."""
STOP_TIMEOUT_SECONDS = 5.0
"""How long stopping it (revoke, close) may take before the thread is left to end."""
MIN_ETCD_CHECK_SECONDS = 0.25
"""The shortest deadline and health-check interval of the heartbeat's etcd client (they
scale with the TTL: a sixth and a tenth of it)."""


class Heartbeat:
    """The node's lease on its own thread (see the module docstring).

    ``on_change()`` is called on the main loop whenever the lease's health may have changed;
    ``fence_limit_seconds`` is how long the lease may go unconfirmed before it counts as
    unhealthy (the lease fence's limit).
    """

    def __init__(
        self,
        *,
        etcd_endpoints: str,
        keys: ClusterKeys,
        record: NodeRecord,
        lease_ttl_seconds: int,
        fence_limit_seconds: float,
        loop_stall_limit_seconds: float,
        metrics: NodeMetrics,
        on_change: Callable[[], None],
        is_storage_healthy: Callable[[], bool] = lambda: True,
        etcd_tls: EtcdTls | None = None,
    ) -> None:
        self._etcd_endpoints = etcd_endpoints
        self._etcd_tls = etcd_tls
        self._is_storage_healthy = is_storage_healthy
        self._keys = keys
        self._initial_record = record
        self._lease_ttl_seconds = lease_ttl_seconds
        self._fence_limit_seconds = fence_limit_seconds
        self._loop_stall_limit_seconds = loop_stall_limit_seconds
        self._metrics = metrics
        self._on_change = on_change
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._registration: NodeRegistration | None = None
        self._etcd: aetcd.Client | None = None
        self._progress_at = time.monotonic()
        """When the main loop last ran its tick (read by the heartbeat thread)."""
        self._tick_task: asyncio.Task[None] | None = None
        self._was_confirmed = True
        self._is_stall_reported = False

    # -- what the main loop reads ---------------------------------------------------------

    @property
    def lease_id(self) -> int:
        """The current lease (0 before start)."""
        return 0 if self._registration is None else self._registration.lease_id

    @property
    def lease_ttl_seconds(self) -> int:
        """The TTL the lease is granted with."""
        return self._lease_ttl_seconds

    @property
    def has_lease(self) -> bool:
        """Whether the lease is believed alive."""
        return self._registration is not None and self._registration.has_lease

    @property
    def confirmed_until(self) -> float:
        """``time.monotonic()`` until which the lease counts as healthy: the send time of the
        last refresh etcd confirmed plus the fencing limit (0 without a lease)."""
        registration = self._registration
        if registration is None or not registration.has_lease:
            return 0.0
        return registration.last_refreshed_at + self._fence_limit_seconds

    def lease_age_seconds(self) -> float:
        """Seconds since etcd confirmed the last refresh of the lease (+Inf without one)."""
        registration = self._registration
        if registration is None or not registration.has_lease:
            return math.inf
        return max(time.monotonic() - registration.last_refreshed_at, 0.0)

    def is_confirmed(self) -> bool:
        """Whether the lease is healthy now: the check before an acknowledgement."""
        return time.monotonic() < self.confirmed_until

    def confirmed_lease(self) -> int:
        """The lease this node may write under now, 0 when none (safe from any thread). A
        write checked before and after with the same non-zero answer happened under one
        continuous ownership: a lease lost and regained meanwhile answers another id."""
        registration = self._registration
        if registration is None or not self.is_confirmed():
            return 0
        return registration.lease_id

    @property
    def record(self) -> NodeRecord:
        """The node record as last published."""
        return self._initial_record if self._registration is None else self._registration.record

    # -- start, stop, update --------------------------------------------------------------

    async def start(self) -> None:
        """Start the thread: connect etcd, grant the lease, publish the record, keep it alive.
        Raises ``Unavailable`` if etcd cannot be reached."""
        self._main_loop = asyncio.get_running_loop()
        self._progress_at = time.monotonic()
        self._tick_task = asyncio.create_task(self._tick(), name="loop-tick")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="heartbeat", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wrap_future(started)
        except BaseException:
            await stop_task(self._tick_task)
            raise

    async def update(self, record: NodeRecord) -> None:
        """Publish a changed record (state, load) under the same lease."""
        registration = self._registration
        if registration is None:
            return
        await self._on_thread(registration.update(record))

    async def stop(self) -> None:
        """Revoke the lease (the record disappears at once) and end the thread."""
        await stop_task(self._tick_task)
        self._tick_task = None
        loop, registration = self._loop, self._registration
        if loop is None or registration is None or not loop.is_running():
            return
        try:
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await self._on_thread(self._shut_down(registration))
        except (TimeoutError, Unavailable) as error:
            _log.warning("heartbeat_stop_slow", error=error)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_SECONDS)

    def abandon(self) -> None:
        """Stop keeping the lease alive without revoking it: it expires a TTL later, after
        this process is gone (the node's sessions did not all stop in time, and must be gone
        before another node takes them)."""
        if self._tick_task is not None:
            self._tick_task.cancel()
            self._tick_task = None
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)

    async def _on_thread(self, step: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(step, self._loop))

    # -- the main loop's side -------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            self._progress_at = now
            self._metrics.loop_lag(max(now - before - TICK_SECONDS, 0.0))

    def _notify(self) -> None:
        """Tell the main loop (from the heartbeat thread) to look at the lease again."""
        loop = self._main_loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_change)

    # -- the heartbeat thread -------------------------------------------------------------

    def _is_healthy(self) -> bool:
        """Whether the node may hold a lease: its main loop runs and its storage answers (a
        node that cannot reach its sessions' files must let them fail over)."""
        return self._is_main_loop_alive() and self._is_storage_healthy()

    def _is_main_loop_alive(self) -> bool:
        stalled_seconds = time.monotonic() - self._progress_at
        if stalled_seconds <= self._loop_stall_limit_seconds:
            if self._is_stall_reported:
                self._is_stall_reported = False
                _log.info("loop_running_again", node_id=self._initial_record.node_id)
            return True
        if self._is_stall_reported:
            return False
        self._is_stall_reported = True
        _log.error(
            "loop_stalled",
            node_id=self._initial_record.node_id,
            stalled_seconds=round(stalled_seconds, 2),
            limit_seconds=self._loop_stall_limit_seconds,
        )
        return False

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            if loop.run_until_complete(self._serve(started)):
                loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shut_down(self, registration: NodeRegistration) -> None:
        await registration.stop()
        if self._etcd is not None:
            await self._etcd.close()

    async def _serve(self, started: concurrent.futures.Future[None]) -> bool:
        """Connect, register and start the keepalive; whether that worked (the error goes to
        ``started``)."""
        etcd: aetcd.Client | None = None
        try:
            # Checked and failed over well inside the fencing margin (60 % of the TTL): a
            # member that stops answering must not cost this node its lease.
            ttl = self._lease_ttl_seconds
            etcd = await connect_etcd(
                self._etcd_endpoints,
                tls=self._etcd_tls,
                call_timeout_seconds=max(MIN_ETCD_CHECK_SECONDS, ttl / 6),
                health_interval_seconds=max(MIN_ETCD_CHECK_SECONDS, ttl / 10),
            )
            registration = NodeRegistration(
                etcd,
                self._keys,
                self._initial_record,
                lease_ttl_seconds=self._lease_ttl_seconds,
                on_lease_change=self._notify,
                is_healthy=self._is_healthy,
            )
            await registration.start()
        except Exception as error:
            if etcd is not None:
                await etcd.close()
            started.set_exception(error)
            return False
        self._etcd, self._registration = etcd, registration
        asyncio.get_running_loop().create_task(self._watch_age(), name="lease-age")
        started.set_result(None)
        return True

    async def _watch_age(self) -> None:
        """Tell the main loop when the lease goes unconfirmed past the limit, and back."""
        while True:
            await asyncio.sleep(self._fence_limit_seconds / CHECKS_PER_LIMIT)
            is_confirmed = self.is_confirmed()
            if is_confirmed != self._was_confirmed:
                self._was_confirmed = is_confirmed
                self._notify()
