"""Scenario 1: unary ``GetSession`` straight to the owner node (the baseline), through the
gateway, and through the proxyless client, against a real process mesh (etcd, simnet, node and
gateway processes).

Two load generators, each compared only with a baseline it measured itself in the same run:

- **h2load** (compiled, from Debian's ``nghttp2-client``) for direct vs gateway: throughput
  with many streams in flight, and latency one call at a time (p50/p99 from its request log).
  It uses a small share of the CPU, so the servers, not the generator, set the figures. When
  h2load is missing the asyncio generator stands in, and the results say so.
- **asyncio** (grpc.aio in the harness process) for direct vs the proxyless client, which is
  a Python library and so can only be driven from Python: the generated stub to the owner is
  the baseline.

The mesh runs with tracing on (a parent-based ratio sampler, as a deployment would); a
second, shorter mesh with the OpenTelemetry SDK disabled gives the cost of tracing.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.h2load import H2loadRun, h2load_binary, run_h2load
from bench.nginx import WORKSPACE_HEADER, nginx_binary, nginx_in_front_of
from bench.stats import (
    SAMPLES_KEY,
    LatencySample,
    latency_sample,
    percentile,
    percentile_ms,
    ratio,
)
from bench.tracing_settings import TRACED_ENVIRONMENT, UNTRACED_ENVIRONMENT
from client.proxyless import ProxylessClient
from protos import SESSION_SERVICE_NAME, session_pb2, session_pb2_grpc
from testkit import (
    ASYNCIO_GENERATOR,
    HOST,
    MeshSettings,
    ProcessMesh,
    SessionKey,
    create_sessions,
    free_port,
    plan_sessions,
    running_process_mesh,
    session_states,
)

H2LOAD_GENERATOR = "h2load (nghttp2-client)"
CALL_DEADLINE_SECONDS = 5.0
GET_SESSION_PATH = f"/{SESSION_SERVICE_NAME}/GetSession"
MIN_SESSION_BYTES = 20
"""A GetSession answer is at least this long on the wire; an error carries no message."""

THROUGHPUT_ROUNDS = 2
"""h2load throughput phases per path, taken in turns with the other paths."""


@dataclass(frozen=True)
class UnarySizes:
    """How big scenario 1 runs."""

    node_count: int
    """Node processes in the mesh."""
    session_count: int
    """Sessions created (the asyncio phases read them round-robin)."""
    clients: int
    """h2load connections; the asyncio phases run ``clients * streams`` calls in flight."""
    streams: int
    """Streams in flight per h2load connection."""
    warmup_seconds: float
    """Calls made and discarded before each phase (channel setup, caches warm)."""
    throughput_seconds: float
    """Length of each path's throughput phase."""
    latency_seconds: float
    """Length of each path's one-call-at-a-time latency phase."""
    measures_tracing_cost: bool
    """Also run a mesh with tracing off, to report what tracing costs."""
    measures_bare_proxy: bool
    """Also measure a bare ``grpc.aio`` forwarder (:mod:`bench.bare_proxy`): the hop's floor."""


FULL_UNARY_SIZES = UnarySizes(
    node_count=2,
    session_count=64,
    clients=4,
    streams=16,
    warmup_seconds=0.5,
    throughput_seconds=3.0,
    latency_seconds=2.0,
    measures_tracing_cost=True,
    measures_bare_proxy=True,
)
SMOKE_UNARY_SIZES = UnarySizes(
    node_count=1,
    session_count=8,
    clients=2,
    streams=8,
    warmup_seconds=0.1,
    throughput_seconds=0.6,
    latency_seconds=0.3,
    measures_tracing_cost=False,
    measures_bare_proxy=False,
)

Caller = Callable[[session_pb2.GetSessionRequest, SessionKey], Any]
"""Starts one GetSession for a session on a path (returns an awaitable)."""


@dataclass
class _Phase:
    latencies_seconds: list[float]
    errors: int
    elapsed_seconds: float


async def _drive(
    call: Caller, sessions: Sequence[SessionKey], *, concurrency: int, seconds: float
) -> _Phase:
    """``concurrency`` asyncio workers calling GetSession back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    requests = [
        session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1]) for key in sessions
    ]

    async def worker(offset: int) -> None:
        nonlocal errors
        position = offset
        while time.perf_counter() < deadline:
            index = position % len(sessions)
            position += 1
            started = time.perf_counter()
            try:
                await call(requests[index], sessions[index])
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    return _Phase(latencies, errors, time.perf_counter() - started)


async def _asyncio_paths(
    calls: dict[str, Caller], sessions: Sequence[SessionKey], sizes: UnarySizes
) -> dict[str, dict[str, Any]]:
    """Each path's throughput and one-at-a-time latency under the asyncio generator; the
    throughput phases take turns across paths (``THROUGHPUT_ROUNDS``), as with h2load."""
    concurrency = sizes.clients * sizes.streams
    for call in calls.values():
        await _drive(call, sessions, concurrency=concurrency, seconds=sizes.warmup_seconds)
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    elapsed = dict.fromkeys(calls, 0.0)
    errors = dict.fromkeys(calls, 0)
    for _ in range(THROUGHPUT_ROUNDS):
        for name, call in calls.items():
            load = await _drive(
                call,
                sessions,
                concurrency=concurrency,
                seconds=sizes.throughput_seconds / THROUGHPUT_ROUNDS,
            )
            latencies[name] += load.latencies_seconds
            elapsed[name] += load.elapsed_seconds
            errors[name] += load.errors
    paths: dict[str, dict[str, Any]] = {}
    for name, call in calls.items():
        sequential = await _drive(call, sessions, concurrency=1, seconds=sizes.latency_seconds)
        paths[name] = {
            "calls": len(latencies[name]),
            "errors": errors[name] + sequential.errors,
            "throughput_per_second": len(latencies[name]) / elapsed[name],
            "loaded_p50_ms": percentile_ms(latencies[name], 0.50),
            "loaded_p99_ms": percentile_ms(latencies[name], 0.99),
            "p50_ms": percentile_ms(sequential.latencies_seconds, 0.50),
            "p99_ms": percentile_ms(sequential.latencies_seconds, 0.99),
            "mean_ms": statistics.fmean(sequential.latencies_seconds) * 1000
            if sequential.latencies_seconds
            else None,
            SAMPLES_KEY: latency_sample(sequential.latencies_seconds),
        }
    return paths


async def _h2load_paths(
    addresses: dict[str, str], message: bytes, sizes: UnarySizes, headers: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Each path's throughput and one-at-a-time latency under h2load.

    The throughput phases take turns (``THROUGHPUT_ROUNDS`` rounds over every path), so a
    slow drift of a shared machine's speed weighs on every path alike instead of on whichever
    ran last."""
    requests = dict.fromkeys(addresses, 0)
    seconds = dict.fromkeys(addresses, 0.0)
    for _ in range(THROUGHPUT_ROUNDS):
        for name, address in addresses.items():
            load: H2loadRun = await asyncio.to_thread(
                run_h2load,
                address,
                GET_SESSION_PATH,
                message,
                clients=sizes.clients,
                streams_per_client=sizes.streams,
                duration_seconds=sizes.throughput_seconds / THROUGHPUT_ROUNDS,
                warmup_seconds=sizes.warmup_seconds,
                min_response_bytes=MIN_SESSION_BYTES,
                headers=headers,
            )
            requests[name] += load.requests
            seconds[name] += load.requests / load.throughput_per_second
    paths: dict[str, dict[str, Any]] = {}
    for name, address in addresses.items():
        sequential: H2loadRun = await asyncio.to_thread(
            run_h2load,
            address,
            GET_SESSION_PATH,
            message,
            clients=1,
            streams_per_client=1,
            duration_seconds=sizes.latency_seconds,
            warmup_seconds=sizes.warmup_seconds,
            min_response_bytes=MIN_SESSION_BYTES,
            with_latencies=True,
            headers=headers,
        )
        paths[name] = {
            "calls": requests[name],
            "errors": 0,  # run_h2load raises unless every answered call carried a session
            "throughput_per_second": requests[name] / seconds[name],
            "p50_ms": percentile(sequential.latencies_ms, 0.50),
            "p99_ms": percentile(sequential.latencies_ms, 0.99),
            "sequential_calls": len(sequential.latencies_ms),
            SAMPLES_KEY: latency_sample(sequential.latencies_ms, in_seconds=False),
        }
    return paths


def _take_samples(figures: dict[str, Any], prefix: str = "") -> dict[str, LatencySample]:
    """Remove the one-call-at-a-time latency samples from ``figures`` and the dicts in it
    (kept out of results.json); each under its path's name (``gateway.nginx``)."""
    found: dict[str, LatencySample] = {}
    sample = figures.pop(SAMPLES_KEY, None)
    if sample is not None:
        found[prefix] = sample
    for key, value in figures.items():
        if isinstance(value, dict):
            found.update(_take_samples(value, f"{prefix}.{key}" if prefix else key))
    return found


def _difference(minuend: float | None, subtrahend: float | None) -> float | None:
    if minuend is None or subtrahend is None:
        return None
    return minuend - subtrahend


@contextlib.asynccontextmanager
async def _stubs_to(
    addresses: set[str],
) -> AsyncIterator[dict[str, session_pb2_grpc.SessionServiceStub]]:
    """A generated stub per address, on channels closed afterwards."""
    channels = {address: grpc.aio.insecure_channel(address) for address in addresses}
    try:
        yield {
            address: session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
            for address, channel in channels.items()
        }
    finally:
        for channel in channels.values():
            await channel.close(None)


def _owner_caller(
    stubs: dict[str, session_pb2_grpc.SessionServiceStub], owners: dict[SessionKey, str]
) -> Caller:
    """The baseline path: the generated stub of each session's owner node."""

    def call(request: session_pb2.GetSessionRequest, key: SessionKey) -> Any:
        return stubs[owners[key]].GetSession(request, timeout=CALL_DEADLINE_SECONDS)

    return call


async def _prepared_mesh_sessions(
    mesh: ProcessMesh, sessions: Sequence[SessionKey]
) -> dict[SessionKey, str]:
    """Create the sessions; each one's owner node address."""
    await create_sessions(mesh.gateway_address, sessions)
    states = await session_states(mesh.gateway_address, sessions)
    failed = {key: value for key, value in states.items() if value[0] < 0}
    if failed:
        raise RuntimeError(f"GetSession failed before the run: {failed}")
    return {key: mesh.node_addresses[states[key][1]] for key in sessions}


async def _h2load_direct_and_gateway(
    mesh: ProcessMesh,
    *,
    owner: str,
    addresses: dict[str, str],
    message: bytes,
    sizes: UnarySizes,
    headers: Sequence[str],
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(generator, direct, gateway) under h2load; the gateway's figures carry those of the
    other hops measured next to it (nginx, the bare forwarder)."""
    if sizes.measures_bare_proxy:
        addresses["bare_proxy"] = f"{HOST}:{free_port()}"
        await mesh.start_process(
            "bare-proxy",
            [
                *(sys.executable, "-m", "bench.bare_proxy"),
                *("--listen", addresses["bare_proxy"], "--target", owner),
            ],
            addresses["bare_proxy"],
        )
    paths = await _h2load_paths(addresses, message, sizes, headers)
    direct, gateway = paths["direct"], paths["gateway"]
    for other in ("bare_proxy", "nginx"):
        if other in paths:
            gateway[other] = paths[other]
    return H2LOAD_GENERATOR, direct, gateway


async def _direct_and_gateway(
    mesh: ProcessMesh,
    owners: dict[SessionKey, str],
    sessions: Sequence[SessionKey],
    sizes: UnarySizes,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(generator, direct, gateway) figures, with h2load when it is installed."""
    if h2load_binary() is not None:
        key = sessions[0]
        message = session_pb2.GetSessionRequest(
            workspace_id=key[0], session_id=key[1]
        ).SerializeToString()
        addresses = {"direct": owners[key], "gateway": mesh.gateway_address}
        headers = [f"{WORKSPACE_HEADER}: {key[0]}"]
        with contextlib.ExitStack() as proxies:
            if nginx_binary() is not None:
                addresses["nginx"] = proxies.enter_context(nginx_in_front_of(owners[key]))
            return await _h2load_direct_and_gateway(
                mesh,
                owner=owners[key],
                addresses=addresses,
                message=message,
                sizes=sizes,
                headers=headers,
            )
    async with _stubs_to({*owners.values(), mesh.gateway_address}) as stubs:
        gateway_stub = stubs[mesh.gateway_address]
        paths = await _asyncio_paths(
            {
                "direct": _owner_caller(stubs, owners),
                "gateway": lambda request, _key: gateway_stub.GetSession(
                    request, timeout=CALL_DEADLINE_SECONDS
                ),
            },
            sessions,
            sizes,
        )
    direct, gateway = paths["direct"], paths["gateway"]
    return ASYNCIO_GENERATOR + " (h2load not installed)", direct, gateway


async def _direct_and_client(
    mesh: ProcessMesh,
    owners: dict[SessionKey, str],
    sessions: Sequence[SessionKey],
    sizes: UnarySizes,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(direct stub, proxyless client) figures from the asyncio generator."""
    async with (
        _stubs_to(set(owners.values())) as stubs,
        await ProxylessClient.connect(
            etcd_endpoints=mesh.etcd_url, cluster=mesh.settings.cluster
        ) as client,
    ):
        paths = await _asyncio_paths(
            {
                "direct": _owner_caller(stubs, owners),
                "client": lambda request, _key: client.GetSession(
                    request, timeout=CALL_DEADLINE_SECONDS
                ),
            },
            sessions,
            sizes,
        )
    return paths["direct"], paths["client"]


async def _tracing_cost(sizes: UnarySizes, sessions: Sequence[SessionKey]) -> dict[str, Any]:
    """Gateway throughput of a mesh with the SDK disabled (compared with the traced one)."""
    settings = MeshSettings(
        node_count=sizes.node_count, cluster="bench", environment=UNTRACED_ENVIRONMENT
    )
    with tempfile.TemporaryDirectory(prefix="sessionmesh-bench-") as state_dir:
        async with running_process_mesh(Path(state_dir), settings) as mesh:
            await _prepared_mesh_sessions(mesh, sessions)
            key = sessions[0]
            message = session_pb2.GetSessionRequest(
                workspace_id=key[0], session_id=key[1]
            ).SerializeToString()
            if h2load_binary() is None:
                async with _stubs_to({mesh.gateway_address}) as stubs:
                    gateway_stub = stubs[mesh.gateway_address]
                    gateway = (
                        await _asyncio_paths(
                            {
                                "gateway": lambda request, _key: gateway_stub.GetSession(
                                    request, timeout=CALL_DEADLINE_SECONDS
                                )
                            },
                            sessions,
                            sizes,
                        )
                    )["gateway"]
                return {"load_generator": ASYNCIO_GENERATOR, "gateway": gateway}
            load = await asyncio.to_thread(
                run_h2load,
                mesh.gateway_address,
                GET_SESSION_PATH,
                message,
                clients=sizes.clients,
                streams_per_client=sizes.streams,
                duration_seconds=sizes.throughput_seconds,
                warmup_seconds=sizes.warmup_seconds,
                min_response_bytes=MIN_SESSION_BYTES,
            )
    return {
        "load_generator": H2LOAD_GENERATOR,
        "gateway": {"calls": load.requests, "throughput_per_second": load.throughput_per_second},
    }


async def run_unary_scenario(sizes: UnarySizes) -> dict[str, Any]:
    """Direct-to-owner (baseline) vs gateway vs proxyless client GetSession: throughput,
    p50/p99, and the ratios."""
    sessions = plan_sessions(workspace_count=sizes.session_count, session_count=sizes.session_count)
    settings = MeshSettings(
        node_count=sizes.node_count, cluster="bench", environment=TRACED_ENVIRONMENT
    )
    with tempfile.TemporaryDirectory(prefix="sessionmesh-bench-") as state_dir:
        async with running_process_mesh(Path(state_dir), settings) as mesh:
            owners = await _prepared_mesh_sessions(mesh, sessions)
            generator, direct, gateway = await _direct_and_gateway(mesh, owners, sessions, sizes)
            client_direct, client = await _direct_and_client(mesh, owners, sessions, sizes)
    result: dict[str, Any] = {
        "load_generator": generator,
        "client_load_generator": ASYNCIO_GENERATOR,
        "tracing": dict(TRACED_ENVIRONMENT),
        "node_count": sizes.node_count,
        "session_count": sizes.session_count,
        "concurrency": sizes.clients * sizes.streams,
        "throughput_seconds": sizes.throughput_seconds,
        "direct": direct,
        "gateway": gateway,
        "client_direct": client_direct,
        "client": client,
        "gateway_vs_direct_throughput": ratio(
            gateway["throughput_per_second"], direct["throughput_per_second"]
        ),
        "gateway_added_p50_ms": _difference(gateway["p50_ms"], direct["p50_ms"]),
        "bare_proxy_added_p50_ms": _difference(
            gateway.get("bare_proxy", {}).get("p50_ms"), direct["p50_ms"]
        ),
        "gateway_vs_nginx_throughput": ratio(
            gateway["throughput_per_second"],
            gateway.get("nginx", {}).get("throughput_per_second"),
        ),
        "nginx_vs_direct_throughput": ratio(
            gateway.get("nginx", {}).get("throughput_per_second"),
            direct["throughput_per_second"],
        ),
        "nginx_added_p50_ms": _difference(gateway.get("nginx", {}).get("p50_ms"), direct["p50_ms"]),
        "bare_proxy_vs_direct_throughput": ratio(
            gateway.get("bare_proxy", {}).get("throughput_per_second"),
            direct["throughput_per_second"],
        ),
        "client_vs_direct_throughput": ratio(
            client["throughput_per_second"], client_direct["throughput_per_second"]
        ),
        "client_added_p50_ms": _difference(client["p50_ms"], client_direct["p50_ms"]),
    }
    if sizes.measures_tracing_cost:
        untraced = await _tracing_cost(sizes, sessions)
        result["untraced"] = untraced
        result["gateway_traced_vs_untraced_throughput"] = ratio(
            gateway["throughput_per_second"], untraced["gateway"]["throughput_per_second"]
        )
    # One call at a time, per path (direct, gateway, gateway.nginx, client, ...): the figures'.
    result[SAMPLES_KEY] = _take_samples(result)
    return result
