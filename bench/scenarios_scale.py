"""Scenario 3: scale. Up to 10,000 sessions over 8 node processes on this one machine.

A process mesh (etcd, simnet, 8 nodes, a gateway) starts; once it is up and idle each node
process's resident memory (``VmRSS`` of ``/proc/<pid>/status``, no psutil) is the baseline.
Then ``session_count`` sessions are created through the gateway (``create_concurrency``
calls in flight, an asyncio grpc.aio load generator in this process) and polled with
GetSession until every one is READY: ``create_all_seconds`` runs from the first create to
the poll that saw the last one READY. No create starts after ``create_budget_seconds`` (25 s
at full size), so a slower machine hosts fewer sessions rather than overrunning ``make
bench``; ``sessions`` says how many. A create that failed (first-try codes in
``create_errors``) and is not found by the poll is created again, as a client would
(``create_retries``): CreateSession is idempotent. RSS is read again (after a short settle),
and

    memory_per_session_kb = (sum of node RSS after - sum of node RSS baseline) / sessions

Each session holds one TCP connection from its node to simnet (two descriptors on this
machine), so the harness raises its own ``RLIMIT_NOFILE`` soft limit to the hard limit before
spawning: the children inherit it (nodes and simnet also raise their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from protos import session_pb2, session_pb2_grpc
from testkit import (
    ASYNCIO_GENERATOR,
    MeshSettings,
    ProcessMesh,
    SessionKey,
    plan_sessions,
    running_process_mesh,
)

CALL_DEADLINE_SECONDS = 30.0
PHONE_NUMBER = "+14155550100"
READY = session_pb2.SESSION_STATE_READY
SETTLE_SECONDS = 1.0
"""Pause after the last session is READY before RSS is read again (buffers, GC)."""
POLL_PAUSE_SECONDS = 0.1


@dataclass(frozen=True)
class ScaleSizes:
    """How big scenario 3 runs."""

    node_count: int
    """Node processes in the mesh."""
    session_count: int
    """Sessions created (and waited READY)."""
    workspace_count: int
    """Workspaces the sessions are spread over (round-robin)."""
    max_sessions: int
    """Every node's ``--max-sessions``."""
    create_concurrency: int
    """CreateSession (and GetSession poll) calls in flight."""
    ready_timeout_seconds: float
    """How long creating and readying every session may take."""
    create_budget_seconds: float | None = None
    """No create is started after this long: on a slower machine the scenario hosts fewer
    sessions (``sessions`` in the result says how many) instead of running past ``make bench``'s
    five minutes. None: every one of ``session_count``."""
    pair_delay_ms: int = 20
    """simnet's QR scan delay (the mesh default)."""
    lease_ttl_seconds: int = 5
    """Every node's ``--lease-ttl-seconds``: the node's production default, not the process
    mesh's 2 s (fast failover tests), which a node starved by the create burst can miss."""


FULL_SCALE_SIZES = ScaleSizes(
    node_count=8,
    session_count=10_000,
    workspace_count=1_000,
    max_sessions=5_000,
    create_concurrency=64,
    ready_timeout_seconds=240.0,
    create_budget_seconds=25.0,
)
SMOKE_SCALE_SIZES = ScaleSizes(
    node_count=2,
    session_count=200,
    workspace_count=40,
    max_sessions=500,
    create_concurrency=64,
    ready_timeout_seconds=20.0,
)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (children inherit it);
    the limits now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kb(pid: int) -> int:
    """A process's resident set size in KB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _node_rss_kb(mesh: ProcessMesh) -> dict[str, int]:
    return {node_id: rss_kb(mesh.process_id(node_id)) for node_id in sorted(mesh.node_addresses)}


def _other_rss_kb(mesh: ProcessMesh) -> dict[str, int]:
    return {name: rss_kb(mesh.process_id(name)) for name in ("gateway", "simnet", "etcd")}


async def _create_all(
    stub: session_pb2_grpc.SessionServiceStub,
    sessions: Sequence[SessionKey],
    concurrency: int,
    *,
    stop_at: float | None = None,
) -> tuple[Counter[str], int]:
    """CreateSession for every session (in order), ``concurrency`` at once, none started
    after ``stop_at`` (``perf_counter``); the error codes seen and how many were started."""
    errors: Counter[str] = Counter()
    queue = iter(sessions)
    started = 0

    async def worker() -> None:
        nonlocal started
        for key in queue:
            if stop_at is not None and time.perf_counter() > stop_at:
                return
            started += 1
            request = session_pb2.CreateSessionRequest(
                workspace_id=key[0], session_id=key[1], phone_number=PHONE_NUMBER
            )
            try:
                await stub.CreateSession(request, timeout=CALL_DEADLINE_SECONDS)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors, started


async def _poll_ready(
    stub: session_pb2_grpc.SessionServiceStub,
    sessions: Sequence[SessionKey],
    *,
    concurrency: int,
    deadline: float,
) -> tuple[dict[SessionKey, str], Counter[str]]:
    """GetSession until every session is READY; where each runs, and the errors of the
    CreateSession retries made meanwhile. A session the gateway does not find (its create
    failed, e.g. DEADLINE_EXCEEDED under the burst) is created again, as a client would:
    CreateSession is idempotent. Raises ``TimeoutError``."""
    placed: dict[SessionKey, str] = {}
    retry_errors: Counter[str] = Counter()
    pending = list(sessions)
    last: Counter[str] = Counter()
    while pending:
        last = Counter()
        missing: list[SessionKey] = []
        queue = iter(pending)

        async def worker(
            source: Any = queue, seen: Counter[str] = last, lost: list[SessionKey] = missing
        ) -> None:
            for key in source:
                request = session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1])
                try:
                    got = await stub.GetSession(request, timeout=CALL_DEADLINE_SECONDS)
                except grpc.aio.AioRpcError as error:
                    seen[error.code().name] += 1
                    if error.code() == grpc.StatusCode.NOT_FOUND:
                        lost.append(key)
                    continue
                if got.state == READY and got.node_id:
                    placed[key] = got.node_id
                else:
                    seen[session_pb2.SessionState.Name(got.state)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if missing:
            retry_errors.update((await _create_all(stub, missing, concurrency))[0])
            retry_errors["retried"] += len(missing)
        pending = [key for key in pending if key not in placed]
        if not pending:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(sessions)} not READY: {dict(last)}")
        await asyncio.sleep(POLL_PAUSE_SECONDS)
    return placed, retry_errors


async def run_scale_scenario(sizes: ScaleSizes) -> dict[str, Any]:
    """Create ``session_count`` sessions over ``node_count`` nodes; time and memory."""
    open_files = raise_open_files_limit()
    sessions = plan_sessions(
        workspace_count=sizes.workspace_count, session_count=sizes.session_count
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
            mesh_up_seconds = time.perf_counter() - wall_started
            await asyncio.sleep(SETTLE_SECONDS)  # idle: imports done, first etcd round trips
            baseline = _node_rss_kb(mesh)
            baseline_other = _other_rss_kb(mesh)
            async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
                stub = session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
                started = time.perf_counter()
                stop_at = (
                    None
                    if sizes.create_budget_seconds is None
                    else started + sizes.create_budget_seconds
                )
                create_errors, issued = await _create_all(
                    stub, sessions, sizes.create_concurrency, stop_at=stop_at
                )
                created_seconds = time.perf_counter() - started
                # Issued in order by workers sharing one iterator: those started are a prefix.
                sessions = sessions[:issued]
                placed, retry_errors = await _poll_ready(
                    stub,
                    sessions,
                    concurrency=sizes.create_concurrency,
                    deadline=started + sizes.ready_timeout_seconds,
                )
                create_all_seconds = time.perf_counter() - started
            await asyncio.sleep(SETTLE_SECONDS)
            after = _node_rss_kb(mesh)
            after_other = _other_rss_kb(mesh)
            simnet = await mesh.simnet_stats(include_ids=False)
            # Measured: SIGKILL the nodes, or the teardown drains every session node by node.
            await mesh.kill_all_nodes()
    per_node = Counter(placed.values())
    added_kb = sum(after.values()) - sum(baseline.values())
    counts = list(per_node.values())
    mean = sum(counts) / sizes.node_count
    return {
        "load_generator": ASYNCIO_GENERATOR,
        "node_count": sizes.node_count,
        "sessions": len(sessions),
        "sessions_planned": sizes.session_count,
        "create_budget_seconds": sizes.create_budget_seconds,
        "workspace_count": sizes.workspace_count,
        "max_sessions_per_node": sizes.max_sessions,
        "create_concurrency": sizes.create_concurrency,
        "pair_delay_ms": sizes.pair_delay_ms,
        "lease_ttl_seconds": sizes.lease_ttl_seconds,
        "open_files_limit": {"soft": open_files[0], "hard": open_files[1]},
        "mesh_start_seconds": round(mesh_up_seconds, 3),
        "create_calls_seconds": round(created_seconds, 3),
        "create_errors": dict(create_errors),
        "create_retries": dict(retry_errors),
        "create_all_seconds": round(create_all_seconds, 3),
        "sessions_per_second": len(sessions) / create_all_seconds,
        "sessions_per_node": dict(sorted(per_node.items())),
        "balance_max_over_mean": max(counts) / mean if counts and mean else None,
        "rss_kb": {
            node_id: {"baseline": baseline[node_id], "after": after[node_id]}
            for node_id in baseline
        },
        "rss_kb_other": {
            name: {"baseline": baseline_other[name], "after": after_other.get(name)}
            for name in baseline_other
        },
        "rss_total_baseline_kb": sum(baseline.values()),
        "rss_total_after_kb": sum(after.values()),
        "rss_added_kb": added_kb,
        "memory_per_session_kb": added_kb / len(sessions),
        "simnet_live_accounts": simnet.get("live_accounts"),
        "simnet_replaced": simnet.get("replaced"),
        "wall_seconds": round(time.perf_counter() - wall_started, 3),
    }
