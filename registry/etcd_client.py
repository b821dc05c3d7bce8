"""aetcd's client, over every member of the etcd cluster.

aetcd 1.0 opens one plaintext channel to one ``host:port`` and keeps it forever, sets no
deadline unless asked, and no keepalive. Its API is what the packages use, so
:class:`EtcdClient` keeps that API and changes how the channel is made and kept:

- **Every endpoint**: the client starts at a random one of ``--etcd``'s endpoints (so the
  fleet does not pile onto the first), and a health check — etcd's ``Maintenance.Status`` every
  ``health_interval_seconds``, bounded by the same — moves it to the next endpoint that
  answers *and has a leader* as soon as the current one fails, hangs (a SIGSTOPped or
  blackholed member answers nothing) or loses its leader (a member cut off from the others).
  Moving ends the old channel's watch streams at once, so the watch-fed mirrors resync on the
  new member; the old channel itself is closed only once its calls in flight have had their
  deadline (closing it under them would raise ``CancelledError`` in their callers, as if
  their own task had been cancelled).
- **A deadline on every call** (``call_timeout_seconds``), and watch streams opened with
  etcd's ``hasleader`` requirement, so a member that loses its leader ends them instead of
  going silent.
- **gRPC keepalive** on the channel, within etcd's default enforcement (pings at most every
  5 s), so a half-open connection is found even between health checks.
- **TLS**: a channel built from ``grpc.ssl_channel_credentials`` when credentials are given
  (aetcd itself can only open plaintext channels).

Why extend aetcd rather than change clients: it is the asyncio etcd v3 client with the API
the packages already use (leases, transactions, watches), and only its channel set-up falls
short; the ``etcd3`` package no longer imports with current protobuf, and the other asyncio
clients are less kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any

import aetcd
import grpc
import structlog
from aetcd import rpc, rtypes, watcher

from registry.background import stop_task

_log = structlog.get_logger(__name__)

DEFAULT_CALL_TIMEOUT_SECONDS = 5.0
"""The deadline of one etcd call (a watch stream has none)."""
DEFAULT_HEALTH_INTERVAL_SECONDS = 1.0
"""How often the current endpoint is checked, and how long one check may take."""
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
"""Pings every 10 s, idle or not: etcd refuses clients that ping more often than every 5 s."""
WATCH_CANCEL_TIMEOUT_SECONDS = 2.0
"""How long cancelling one watch may wait for etcd's answer."""
RETIRE_MARGIN_SECONDS = 1.0
"""How long after the call deadline a channel left behind is closed."""
_REQUIRE_LEADER = (("hasleader", "true"),)
"""Metadata that makes etcd end a watch stream when its member has no leader."""

Endpoint = tuple[str, int]


class EtcdClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type information
    """An :class:`aetcd.Client` over ``endpoints`` (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        call_timeout_seconds: float = DEFAULT_CALL_TIMEOUT_SECONDS,
        health_interval_seconds: float = DEFAULT_HEALTH_INTERVAL_SECONDS,
        credentials: grpc.ChannelCredentials | None = None,
        first: int | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self._endpoints = list(endpoints)
        # Random unless told: a fleet that always starts at the first member piles onto it.
        self._current = random.randrange(len(self._endpoints)) if first is None else first
        host, port = self._endpoints[self._current]
        super().__init__(host=host, port=port, timeout=call_timeout_seconds)
        self._credentials = credentials
        self._health_interval_seconds = health_interval_seconds
        self._health_task: asyncio.Task[None] | None = None
        self._switch_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        """The ``host:port`` calls go to now."""
        host, port = self._endpoints[self._current]
        return f"{host}:{port}"

    def _open_channel(self, endpoint: Endpoint) -> grpc.aio.Channel:
        target = f"{endpoint[0]}:{endpoint[1]}"
        if self._credentials is not None:
            return grpc.aio.secure_channel(target, self._credentials, options=KEEPALIVE_OPTIONS)
        return grpc.aio.insecure_channel(target, options=KEEPALIVE_OPTIONS)

    def _use(self, channel: grpc.aio.Channel) -> None:
        """Point every stub (and a new watcher) at ``channel``."""
        self.channel = channel
        self.kvstub = rpc.KVStub(channel)
        self.clusterstub = rpc.ClusterStub(channel)
        self.leasestub = rpc.LeaseStub(channel)
        self.maintenancestub = rpc.MaintenanceStub(channel)
        self._watcher = watcher.Watcher(
            rpc.WatchStub(channel), timeout=self._timeout, metadata=_REQUIRE_LEADER
        )

    async def connect(self) -> None:
        """Open the channel to the current endpoint (no round trip: see :meth:`probe`)."""
        if not self._connected.is_set():
            self._use(self._open_channel(self._endpoints[self._current]))
            self._connected.set()

    async def probe(self) -> bool:
        """Whether the current endpoint answers within the health interval, with a leader."""
        await self.connect()
        return await _answers_with_leader(self.maintenancestub, self._health_interval_seconds)

    def start_health_checks(self) -> None:
        """Check the current endpoint every health interval; move on when it fails."""
        if self._health_task is None:
            self._health_task = asyncio.create_task(self._check_health(), name="etcd-health")

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_seconds)
            if not await self.probe():
                await self.fail_over()

    async def fail_over(self) -> bool:
        """Move to the next endpoint that answers with a leader; whether one did. The old
        channel is closed either way when another endpoint answered."""
        async with self._switch_lock:
            failed = self.endpoint
            for step in range(1, len(self._endpoints) + 1):
                index = (self._current + step) % len(self._endpoints)
                channel = self._open_channel(self._endpoints[index])
                stub = rpc.MaintenanceStub(channel)
                if await _answers_with_leader(stub, self._health_interval_seconds):
                    old_channel, old_watcher = self.channel, self._watcher
                    self._current = index
                    self._use(channel)
                    _log.warning("etcd_endpoint_changed", failed=failed, now=self.endpoint)
                    retiring = asyncio.create_task(
                        self._retire(old_channel, old_watcher), name="etcd-retire-channel"
                    )
                    self._retiring.add(retiring)
                    retiring.add_done_callback(self._retiring.discard)
                    return True
                await channel.close(None)
            _log.warning("etcd_unreachable", endpoints=len(self._endpoints), current=failed)
            return False

    async def _retire(self, channel: Any, old_watcher: Any) -> None:
        """End ``old_watcher``'s streams now; close ``channel`` once every call in flight on
        it has passed its deadline."""
        with contextlib.suppress(Exception):
            await old_watcher.shutdown()
        try:
            await asyncio.sleep(self._timeout + RETIRE_MARGIN_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                await channel.close(None)

    async def close(self) -> None:
        """Stop the health checks, end the watches and close the channels."""
        if self._health_task is not None:
            await stop_task(self._health_task)
            self._health_task = None
        for retiring in list(self._retiring):
            await stop_task(retiring)  # closes its channel at once
        await super().close()

    async def watch(self, key: bytes, **options: Any) -> rtypes.Watch:
        """aetcd's ``watch``, bound to the watcher that made it: after a move to another
        endpoint, cancelling a watch of the old stream must not reach the new one (watch ids
        are per stream, so it could cancel another watch there)."""
        await self.connect()
        own_watcher = self._watcher
        events: asyncio.Queue[Any] = asyncio.Queue()

        async def on_response(response: Any) -> None:
            await events.put(response)

        callback = await own_watcher.add_callback(key, on_response, **options)
        cancelled = asyncio.Event()

        async def cancel() -> None:
            cancelled.set()
            await events.put(None)
            # Bounded: on a stream that broke (etcd restarting) aetcd's cancel can wait for an
            # answer that never comes, and a mirror stopping would hang on it. The watch ends
            # with its stream anyway.
            with contextlib.suppress(TimeoutError, aetcd.ClientError, grpc.aio.AioRpcError):
                async with asyncio.timeout(WATCH_CANCEL_TIMEOUT_SECONDS):
                    await own_watcher.cancel(callback.watch_id)

        async def iterate() -> Any:
            while not cancelled.is_set():
                event = await events.get()
                if event is None:
                    return
                if isinstance(event, Exception):
                    cancelled.set()
                    if isinstance(event, grpc.aio.AioRpcError):
                        raise aetcd.ClientError(event.details()) from event
                    raise event
                yield event

        return rtypes.Watch(iterate, cancel, callback.watch_id)


async def _answers_with_leader(stub: Any, timeout_seconds: float) -> bool:
    try:
        async with asyncio.timeout(timeout_seconds):
            status = await stub.Status(rpc.StatusRequest(), timeout=timeout_seconds)
    except (grpc.aio.AioRpcError, TimeoutError):
        return False
    return bool(status.leader)
