"""Scenario 1: unary ``GetSession`` straight to the owner node (the baseline) and through the
gateway, against a real process mesh (etcd, simnet, node and gateway processes).

The load generator is asyncio grpc.aio in this process. Throughput is measured with many
calls in flight; latency with one call at a time, so p50 is the path's cost and not queueing.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.process_mesh import MeshSettings, process_mesh
from bench.workload import SessionKey, create_sessions, plan_sessions, session_states
from protos import session_pb2, session_pb2_grpc

LOAD_GENERATOR = "asyncio (grpc.aio, in the harness process)"
CALL_DEADLINE_SECONDS = 5.0


@dataclass(frozen=True)
class UnarySizes:
    """How big scenario 1 runs."""

    node_count: int
    """Node processes in the mesh."""
    session_count: int
    """Sessions created, then read round-robin."""
    concurrency: int
    """Calls in flight during the throughput phase."""
    warmup_seconds: float
    """Calls made and discarded before each phase (channel setup, JIT-free but cache-warm)."""
    throughput_seconds: float
    """Length of each path's throughput phase."""
    latency_seconds: float
    """Length of each path's one-call-at-a-time latency phase."""


FULL_UNARY_SIZES = UnarySizes(
    node_count=2,
    session_count=64,
    concurrency=32,
    warmup_seconds=1.0,
    throughput_seconds=10.0,
    latency_seconds=5.0,
)
SMOKE_UNARY_SIZES = UnarySizes(
    node_count=1,
    session_count=8,
    concurrency=16,
    warmup_seconds=0.2,
    throughput_seconds=1.0,
    latency_seconds=0.5,
)

Stubs = Callable[[SessionKey], session_pb2_grpc.SessionServiceStub]
"""Picks the stub a path uses for one session."""


@dataclass
class _Phase:
    latencies_seconds: list[float]
    errors: int
    elapsed_seconds: float


async def _drive(
    stub_for: Stubs, sessions: Sequence[SessionKey], *, concurrency: int, seconds: float
) -> _Phase:
    """``concurrency`` workers calling GetSession back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal errors
        position = offset
        while time.perf_counter() < deadline:
            key = sessions[position % len(sessions)]
            position += 1
            request = session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1])
            started = time.perf_counter()
            try:
                await stub_for(key).GetSession(request, timeout=CALL_DEADLINE_SECONDS)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    return _Phase(latencies, errors, time.perf_counter() - started)


def _percentile_ms(latencies_seconds: list[float], fraction: float) -> float | None:
    if not latencies_seconds:
        return None
    ordered = sorted(latencies_seconds)
    index = min(len(ordered) - 1, int(fraction * len(ordered)))
    return ordered[index] * 1000


async def _measure_path(
    stub_for: Stubs, sessions: Sequence[SessionKey], sizes: UnarySizes
) -> dict[str, Any]:
    await _drive(stub_for, sessions, concurrency=sizes.concurrency, seconds=sizes.warmup_seconds)
    load = await _drive(
        stub_for, sessions, concurrency=sizes.concurrency, seconds=sizes.throughput_seconds
    )
    sequential = await _drive(stub_for, sessions, concurrency=1, seconds=sizes.latency_seconds)
    return {
        "calls": len(load.latencies_seconds),
        "errors": load.errors + sequential.errors,
        "throughput_per_second": len(load.latencies_seconds) / load.elapsed_seconds,
        "loaded_p50_ms": _percentile_ms(load.latencies_seconds, 0.50),
        "loaded_p99_ms": _percentile_ms(load.latencies_seconds, 0.99),
        "p50_ms": _percentile_ms(sequential.latencies_seconds, 0.50),
        "p99_ms": _percentile_ms(sequential.latencies_seconds, 0.99),
        "mean_ms": statistics.fmean(sequential.latencies_seconds) * 1000
        if sequential.latencies_seconds
        else None,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


async def run_unary_scenario(sizes: UnarySizes) -> dict[str, Any]:
    """Direct-to-owner (baseline) vs gateway GetSession: throughput, p50/p99, and ratios."""
    sessions = plan_sessions(workspace_count=sizes.session_count, session_count=sizes.session_count)
    settings = MeshSettings(node_count=sizes.node_count, cluster="bench")
    with tempfile.TemporaryDirectory(prefix="sessionmesh-bench-") as state_dir:
        async with process_mesh(Path(state_dir), settings) as mesh:
            await create_sessions(mesh.gateway_address, sessions)
            states = await session_states(mesh.gateway_address, sessions)
            failed = {key: value for key, value in states.items() if value[0] < 0}
            if failed:
                raise RuntimeError(f"GetSession failed before the run: {failed}")
            channels = {
                node_id: grpc.aio.insecure_channel(address)
                for node_id, address in mesh.node_addresses.items()
            }
            gateway_channel = grpc.aio.insecure_channel(mesh.gateway_address)
            try:
                node_stubs = {
                    node_id: session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
                    for node_id, channel in channels.items()
                }
                owner_stub = {key: node_stubs[states[key][1]] for key in sessions}
                gateway_stub = session_pb2_grpc.SessionServiceStub(gateway_channel)  # type: ignore[no-untyped-call]
                direct = await _measure_path(owner_stub.__getitem__, sessions, sizes)
                gateway = await _measure_path(lambda _key: gateway_stub, sessions, sizes)
            finally:
                await gateway_channel.close(None)
                for channel in channels.values():
                    await channel.close(None)
    added_p50 = (
        None
        if gateway["p50_ms"] is None or direct["p50_ms"] is None
        else gateway["p50_ms"] - direct["p50_ms"]
    )
    return {
        "load_generator": LOAD_GENERATOR,
        "node_count": sizes.node_count,
        "session_count": sizes.session_count,
        "concurrency": sizes.concurrency,
        "throughput_seconds": sizes.throughput_seconds,
        "direct": direct,
        "gateway": gateway,
        "gateway_vs_direct_throughput": _ratio(
            gateway["throughput_per_second"], direct["throughput_per_second"]
        ),
        "gateway_added_p50_ms": added_p50,
    }
