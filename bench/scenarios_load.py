"""Scenario 2: the checklist's load test against a real process mesh (etcd, simnet, node and
gateway processes), with an asyncio grpc.aio load generator in this process, through the
gateway.

Phases:

0. The baseline: ``baseline_count`` sessions created (each timed to its QR code) and then
   sent to, one call at a time; the bursts' figures are reported next to it as ratios.
1. ``create_count`` concurrent ``CreateSession`` calls (all started at once, distinct session
   ids over ``workspace_count`` workspaces), each timed until its **QR code** is obtained.
2. Wait until every session is READY, then ``create_count`` concurrent ``SendMessage`` calls
   (one per session, unique ``client_message_id``), each timed until the node acknowledged
   it (QUEUED: on disk in the session's outbox).
3. A mixed run: ``mixed_workers`` workers for ``mixed_seconds`` mixing CreateSession (new
   sessions), SendMessage and GetSession; the median latency overall and per method.

How time to QR is measured: ``CreateSession`` answers as soon as the session is hosted and
its driver started, in state STARTING, so its response never carries a QR code (``qr_code``
is set only while QR_PENDING). The cheapest honest way to get the code is then one
``WatchSession`` per session opened right after CreateSession returns: its first event is a
snapshot (``qr_code`` set if the session is QR_PENDING at that moment), then a
``qr_rotated`` event carries the code as soon as the network shows one. The clock runs from
just before CreateSession is sent until the event carrying the code arrives. simnet's phone
"scans" the code ``pair_delay_ms`` after showing it, so a session can be past QR_PENDING
(AUTHENTICATED or READY) before the watch starts: its code was shown and scanned already,
and the time of that observation is an upper bound on its time to QR; these are counted as
``qr_passed_before_watch`` (no extra GetQrCode polling, which would only add load).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.stats import median_ms, percentile_ms, ratio
from protos import session_pb2, session_pb2_grpc
from testkit import (
    ASYNCIO_GENERATOR,
    MeshSettings,
    SessionKey,
    plan_sessions,
    running_process_mesh,
    wait_all_ready,
)

CALL_DEADLINE_SECONDS = 30.0
"""Per call (and per watch until the QR): generous, so a slow call is a latency, not an error."""
CHANNEL_COUNT = 4
"""Client HTTP/2 connections to the gateway, used round-robin."""
PHONE_NUMBER = "+14155550100"
RECIPIENT = "+14155550199"

CHECKLIST_TARGETS_MS = {
    "create_qr_p95_ms": 10_000.0,
    "send_p95_ms": 2_000.0,
    "mixed_median_ms": 1_000.0,
}
"""The checklist's targets: QR p95 < 10 s, send p95 < 2 s, API median < 1 s."""

_PAST_QR = frozenset(
    {
        session_pb2.SESSION_STATE_AUTHENTICATED,
        session_pb2.SESSION_STATE_READY,
    }
)


@dataclass(frozen=True)
class LoadSizes:
    """How big scenario 2 runs."""

    node_count: int
    """Node processes in the mesh."""
    workspace_count: int
    """Workspaces the sessions are spread over (round-robin)."""
    create_count: int
    """Concurrent CreateSession calls (and then as many concurrent SendMessage calls)."""
    max_sessions: int
    """Every node's ``--max-sessions`` (room for the phase-1 and the mixed-run sessions)."""
    ready_timeout_seconds: float
    """How long the sessions may take to become READY after phase 1."""
    mixed_workers: int
    """Concurrent workers of the mixed run."""
    mixed_seconds: float
    """Length of the mixed run."""
    mixed_create_share: float = 0.1
    """Share of mixed-run calls that are CreateSession (a new session each)."""
    mixed_send_share: float = 0.6
    """Share of mixed-run calls that are SendMessage; the rest are GetSession."""
    baseline_count: int = 20
    """Sessions created, then sent to, one call at a time before the bursts: the baseline."""
    pair_delay_ms: int = 20
    """simnet's QR scan delay (the mesh default)."""
    lease_ttl_seconds: int = 5
    """Every node's ``--lease-ttl-seconds``: the node's production default (5), not the
    process mesh's 2 s (tuned for fast failover tests), under which a node whose event loop
    is starved by the 1,000-create burst on a 2-core box misses its lease refresh, fences
    itself and its workspaces move mid-burst (errors and replaced connections)."""


FULL_LOAD_SIZES = LoadSizes(
    node_count=2,
    workspace_count=100,
    create_count=1_000,
    max_sessions=5_000,
    ready_timeout_seconds=30.0,
    mixed_workers=64,
    mixed_seconds=10.0,
)
SMOKE_LOAD_SIZES = LoadSizes(
    node_count=2,
    workspace_count=10,
    create_count=50,
    max_sessions=500,
    ready_timeout_seconds=10.0,
    mixed_workers=8,
    mixed_seconds=1.0,
    baseline_count=5,
)


def _summary(latencies_seconds: Sequence[float], errors: Counter[str]) -> dict[str, Any]:
    return {
        "calls": len(latencies_seconds) + sum(errors.values()),
        "ok": len(latencies_seconds),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "p50_ms": percentile_ms(latencies_seconds, 0.50),
        "p95_ms": percentile_ms(latencies_seconds, 0.95),
        "p99_ms": percentile_ms(latencies_seconds, 0.99),
        "max_ms": max(latencies_seconds) * 1000 if latencies_seconds else None,
    }


def _error_code(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


class _Stubs:
    """A few channels to the gateway, handed out round-robin."""

    def __init__(self, address: str, count: int) -> None:
        # A distinct option per channel: otherwise grpc shares one subchannel (one TCP
        # connection) between channels to the same address.
        self._channels = [
            grpc.aio.insecure_channel(address, options=[("sessionmesh.bench.channel", index)])
            for index in range(count)
        ]
        self._stubs = [
            session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
            for channel in self._channels
        ]
        self._next = itertools.cycle(self._stubs)

    def next(self) -> session_pb2_grpc.SessionServiceStub:
        """The next stub."""
        return next(self._next)

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close(None)


@dataclass
class _QrOutcome:
    latencies_seconds: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seen_in_snapshot: int = 0
    seen_in_event: int = 0
    passed_before_watch: int = 0


async def _create_until_qr(stub: session_pb2_grpc.SessionServiceStub, key: SessionKey) -> str:
    """CreateSession, then watch until the QR code; how the code was obtained."""
    request = session_pb2.CreateSessionRequest(
        workspace_id=key[0], session_id=key[1], phone_number=PHONE_NUMBER
    )
    created = await stub.CreateSession(request, timeout=CALL_DEADLINE_SECONDS)
    if created.qr_code:
        return "snapshot"
    watch = stub.WatchSession(
        session_pb2.WatchSessionRequest(workspace_id=key[0], session_id=key[1]),
        timeout=CALL_DEADLINE_SECONDS,
    )
    try:
        async for event in watch:
            kind = event.WhichOneof("event")
            if kind == "snapshot":
                if event.snapshot.qr_code:
                    return "snapshot"
                if event.snapshot.state in _PAST_QR:
                    return "passed"
            elif kind == "qr_rotated" and event.qr_rotated.code:
                return "event"
            elif kind == "state_changed" and event.state_changed.state in _PAST_QR:
                # Never happens before a qr_rotated event on a live watch; kept as a guard.
                return "passed"
    finally:
        watch.cancel()
    raise RuntimeError(f"watch of {key} ended without a QR code")


async def _create_phase(stubs: _Stubs, sessions: Sequence[SessionKey]) -> _QrOutcome:
    outcome = _QrOutcome()
    start_together = asyncio.Event()

    async def one(key: SessionKey) -> None:
        stub = stubs.next()
        await start_together.wait()
        started = time.perf_counter()
        try:
            how = await _create_until_qr(stub, key)
        except (grpc.aio.AioRpcError, RuntimeError) as error:
            outcome.errors[_error_code(error)] += 1
            return
        outcome.latencies_seconds.append(time.perf_counter() - started)
        if how == "snapshot":
            outcome.seen_in_snapshot += 1
        elif how == "event":
            outcome.seen_in_event += 1
        else:
            outcome.passed_before_watch += 1

    tasks = [asyncio.create_task(one(key)) for key in sessions]
    await asyncio.sleep(0)  # every task is parked on the event: the calls start at once
    start_together.set()
    await asyncio.gather(*tasks)
    return outcome


async def _send(
    stub: session_pb2_grpc.SessionServiceStub, key: SessionKey, message_id: str
) -> None:
    request = session_pb2.SendMessageRequest(
        workspace_id=key[0],
        session_id=key[1],
        client_message_id=message_id,
        to=RECIPIENT,
        text=f"bench {message_id}",
    )
    await stub.SendMessage(request, timeout=CALL_DEADLINE_SECONDS)


async def _send_phase(
    stubs: _Stubs, sessions: Sequence[SessionKey]
) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    start_together = asyncio.Event()

    async def one(index: int, key: SessionKey) -> None:
        stub = stubs.next()
        await start_together.wait()
        started = time.perf_counter()
        try:
            await _send(stub, key, f"send-{index}")
        except grpc.aio.AioRpcError as error:
            errors[_error_code(error)] += 1
            return
        latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(one(index, key)) for index, key in enumerate(sessions)]
    await asyncio.sleep(0)
    start_together.set()
    await asyncio.gather(*tasks)
    return latencies, errors


async def _one_at_a_time(
    stubs: _Stubs, gateway_address: str, sessions: Sequence[SessionKey], timeout_seconds: float
) -> dict[str, Any]:
    """The baseline: each create timed to its QR code, then each send, one call at a time."""
    create_latencies: list[float] = []
    for key in sessions:
        started = time.perf_counter()
        await _create_until_qr(stubs.next(), key)
        create_latencies.append(time.perf_counter() - started)
    await wait_all_ready(gateway_address, sessions, timeout_seconds=timeout_seconds)
    send_latencies: list[float] = []
    for index, key in enumerate(sessions):
        started = time.perf_counter()
        await _send(stubs.next(), key, f"baseline-{index}")
        send_latencies.append(time.perf_counter() - started)
    return {
        "calls": len(sessions),
        "create_qr_p50_ms": percentile_ms(create_latencies, 0.50),
        "send_p50_ms": percentile_ms(send_latencies, 0.50),
    }


async def _mixed_phase(
    stubs: _Stubs, sessions: Sequence[SessionKey], sizes: LoadSizes
) -> tuple[dict[str, Any], list[SessionKey]]:
    """The mixed run; its summary and the sessions it created."""
    latencies: dict[str, list[float]] = {"CreateSession": [], "SendMessage": [], "GetSession": []}
    errors: dict[str, Counter[str]] = {method: Counter() for method in latencies}
    created: list[SessionKey] = []
    new_ids = itertools.count()
    message_ids = itertools.count()
    deadline = time.perf_counter() + sizes.mixed_seconds

    async def worker(index: int) -> None:
        chooser = random.Random(index)  # deterministic mix per worker
        while time.perf_counter() < deadline:
            stub = stubs.next()
            draw = chooser.random()
            started = time.perf_counter()
            if draw < sizes.mixed_create_share:
                method = "CreateSession"
                number = next(new_ids)
                key = (f"ws-{number % sizes.workspace_count}", f"mixed-{number}")
                call: Any = stub.CreateSession(
                    session_pb2.CreateSessionRequest(
                        workspace_id=key[0], session_id=key[1], phone_number=PHONE_NUMBER
                    ),
                    timeout=CALL_DEADLINE_SECONDS,
                )
                created.append(key)
            elif draw < sizes.mixed_create_share + sizes.mixed_send_share:
                method = "SendMessage"
                key = chooser.choice(sessions)
                call = _send(stub, key, f"mixed-{next(message_ids)}")
            else:
                method = "GetSession"
                key = chooser.choice(sessions)
                call = stub.GetSession(
                    session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1]),
                    timeout=CALL_DEADLINE_SECONDS,
                )
            try:
                await call
            except grpc.aio.AioRpcError as error:
                errors[method][_error_code(error)] += 1
                continue
            latencies[method].append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(sizes.mixed_workers)))
    elapsed = time.perf_counter() - started
    every = [latency for values in latencies.values() for latency in values]
    error_count = sum(sum(counter.values()) for counter in errors.values())
    per_method = {
        method: {
            "calls": len(values) + sum(errors[method].values()),
            "errors": sum(errors[method].values()),
            "error_codes": dict(errors[method]),
            "median_ms": median_ms(values),
            "p95_ms": percentile_ms(values, 0.95),
        }
        for method, values in latencies.items()
    }
    summary = {
        "workers": sizes.mixed_workers,
        "seconds": round(elapsed, 3),
        "calls": len(every) + error_count,
        "errors": error_count,
        "calls_per_second": (len(every) + error_count) / elapsed if elapsed > 0 else None,
        "median_ms": median_ms(every),
        "p95_ms": percentile_ms(every, 0.95),
        "p99_ms": percentile_ms(every, 0.99),
        "mix": {
            "CreateSession": sizes.mixed_create_share,
            "SendMessage": sizes.mixed_send_share,
            "GetSession": round(1 - sizes.mixed_create_share - sizes.mixed_send_share, 6),
        },
        "per_method": per_method,
    }
    return summary, created


async def run_load_scenario(sizes: LoadSizes) -> dict[str, Any]:
    """1,000 concurrent creates (time to QR), 1,000 concurrent sends, and a mixed run."""
    sessions = plan_sessions(
        workspace_count=sizes.workspace_count, session_count=sizes.create_count
    )
    settings = MeshSettings(
        node_count=sizes.node_count,
        max_sessions=sizes.max_sessions,
        pair_delay_ms=sizes.pair_delay_ms,
        lease_ttl_seconds=sizes.lease_ttl_seconds,
        cluster="bench",
    )
    wall_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sessionmesh-bench-") as state_dir:
        async with running_process_mesh(Path(state_dir), settings) as mesh:
            stubs = _Stubs(mesh.gateway_address, CHANNEL_COUNT)
            try:
                baseline_sessions = [
                    (f"ws-{index % sizes.workspace_count}", f"baseline-{index}")
                    for index in range(sizes.baseline_count)
                ]
                baseline = await _one_at_a_time(
                    stubs, mesh.gateway_address, baseline_sessions, sizes.ready_timeout_seconds
                )
                phase_started = time.perf_counter()
                qr = await _create_phase(stubs, sessions)
                create_seconds = time.perf_counter() - phase_started
                ready_started = time.perf_counter()
                placed = await wait_all_ready(
                    mesh.gateway_address, sessions, timeout_seconds=sizes.ready_timeout_seconds
                )
                ready_seconds = time.perf_counter() - ready_started
                phase_started = time.perf_counter()
                send_latencies, send_errors = await _send_phase(stubs, sessions)
                send_seconds = time.perf_counter() - phase_started
                mixed, mixed_created = await _mixed_phase(stubs, sessions, sizes)
            finally:
                await stubs.close()
            simnet = await mesh.simnet_stats(include_ids=False)
            # Measured: SIGKILL the nodes, or the teardown drains every session node by node.
            await mesh.kill_all_nodes()
    create_qr = {
        **_summary(qr.latencies_seconds, qr.errors),
        "seconds": round(create_seconds, 3),
        "qr_in_snapshot": qr.seen_in_snapshot,
        "qr_in_event": qr.seen_in_event,
        "qr_passed_before_watch": qr.passed_before_watch,
    }
    send = {**_summary(send_latencies, send_errors), "seconds": round(send_seconds, 3)}
    create_qr_p95 = create_qr["p95_ms"]
    send_p95 = send["p95_ms"]
    mixed_median = mixed["median_ms"]
    return {
        "load_generator": ASYNCIO_GENERATOR,
        "node_count": sizes.node_count,
        "workspace_count": sizes.workspace_count,
        "sessions": sizes.create_count,
        "max_sessions_per_node": sizes.max_sessions,
        "pair_delay_ms": sizes.pair_delay_ms,
        "lease_ttl_seconds": sizes.lease_ttl_seconds,
        "sessions_per_node": dict(Counter(placed.values())),
        "ready_after_create_seconds": round(ready_seconds, 3),
        "create_qr": create_qr,
        "send": send,
        "mixed": {**mixed, "sessions_created": len(mixed_created)},
        "simnet": {key: simnet.get(key) for key in ("paired_accounts", "replaced", "qr_issued")},
        "create_qr_p95_ms": create_qr_p95,
        "send_p95_ms": send_p95,
        "mixed_median_ms": mixed_median,
        "one_at_a_time": baseline,
        "vs_one_at_a_time": {
            "create_qr_p95_ms": ratio(create_qr_p95, baseline["create_qr_p50_ms"]),
            "send_p95_ms": ratio(send_p95, baseline["send_p50_ms"]),
            "mixed_median_ms": ratio(mixed_median, baseline["send_p50_ms"]),
        },
        "checklist_targets_ms": dict(CHECKLIST_TARGETS_MS),
        "checklist_ratio": {
            "create_qr_p95_ms": ratio(create_qr_p95, CHECKLIST_TARGETS_MS["create_qr_p95_ms"]),
            "send_p95_ms": ratio(send_p95, CHECKLIST_TARGETS_MS["send_p95_ms"]),
            "mixed_median_ms": ratio(mixed_median, CHECKLIST_TARGETS_MS["mixed_median_ms"]),
        },
        "wall_seconds": round(time.perf_counter() - wall_started, 3),
    }
