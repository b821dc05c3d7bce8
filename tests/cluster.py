"""The process-mesh harness for kill/restart tests: re-exports ``bench`` (the process mesh, the
workload, the ownership monitor) and adds the ground-truth checks against simnet's record.

Sizes: reduced by default, full with ``SESSIONMESH_FULL=1``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ownership_monitor import (
    OwnerSample,
    OwnershipMonitor,
    ring_placement,
    start_sessions,
    wait_owners_follow_ring,
)
from bench.process_mesh import MeshSettings, ProcessMesh, process_mesh
from bench.workload import (
    LoadClient,
    LoadReport,
    SessionKey,
    account_of,
    create_sessions,
    plan_sessions,
    session_states,
    wait_all_ready,
)
from deploy.ports import free_port

__all__ = [
    "LoadClient",
    "LoadReport",
    "MeshSettings",
    "OwnerSample",
    "OwnershipMonitor",
    "ProcessMesh",
    "SessionKey",
    "Sizes",
    "account_of",
    "assert_exactly_once",
    "assert_never_two_live",
    "create_sessions",
    "free_port",
    "harness",
    "plan_sessions",
    "ring_placement",
    "session_states",
    "sizes",
    "start_sessions",
    "wait_all_delivered",
    "wait_all_ready",
    "wait_owners_follow_ring",
]

IS_FULL = os.environ.get("SESSIONMESH_FULL") == "1"


@dataclass(frozen=True)
class Sizes:
    """How big a chaos test runs."""

    node_count: int
    workspace_count: int
    session_count: int
    load_workers: int


def sizes() -> Sizes:
    """Reduced by default (fast, still exercises the behaviour); the issue's size when full."""
    if IS_FULL:
        return Sizes(node_count=3, workspace_count=60, session_count=300, load_workers=32)
    return Sizes(node_count=3, workspace_count=60, session_count=120, load_workers=12)


def assert_never_two_live(stats: dict[str, Any], sessions: Sequence[SessionKey]) -> None:
    """simnet's ground truth: no account ever had two live connections, none was replaced."""
    accounts = stats["accounts"]
    doubled = {
        account_of(key): accounts[account_of(key)]["max_concurrent_live"]
        for key in sessions
        if accounts.get(account_of(key), {}).get("max_concurrent_live", 0) > 1
    }
    assert not doubled, f"accounts with two live connections at once: {doubled}"
    replaced = {a: c["replaced"] for a, c in accounts.items() if c["replaced"]}
    assert stats["replaced"] == 0, f"connection_replaced events: {replaced}"


def _undelivered(stats: dict[str, Any], report: LoadReport) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for account, ids in report.acked.items():
        delivered = set(stats["accounts"].get(account, {}).get("delivered_ids", ()))
        lost = sorted(ids - delivered)
        if lost:
            missing[account] = lost
    return missing


async def wait_all_delivered(
    mesh: ProcessMesh, report: LoadReport, *, timeout_seconds: float = 20.0
) -> dict[str, Any]:
    """Wait until simnet has delivered every acknowledged message; simnet's stats then.
    Fails naming what is still missing at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        stats = await mesh.simnet_stats()
        missing = _undelivered(stats, report)
        if not missing:
            return stats
        if time.monotonic() > deadline:
            count = sum(len(ids) for ids in missing.values())
            example = dict(list(missing.items())[:3])
            raise AssertionError(f"{count} acknowledged messages never delivered (e.g. {example})")
        await asyncio.sleep(0.1)


def assert_exactly_once(stats: dict[str, Any], report: LoadReport) -> None:
    """Every acknowledged id delivered exactly once; no id of any account delivered twice."""
    assert stats["duplicate_deliveries"] == 0, f"{stats['duplicate_deliveries']} duplicates"
    twice: dict[str, list[str]] = {}
    for account, counts in stats["accounts"].items():
        repeated = [i for i, n in Counter(counts.get("delivered_ids", ())).items() if n > 1]
        if repeated:
            twice[account] = repeated
    assert not twice, f"delivered twice: {twice}"
    assert not _undelivered(stats, report)


@asynccontextmanager
async def harness(tmp_path: Path, settings: MeshSettings) -> AsyncIterator[ProcessMesh]:
    """A process mesh whose logs are printed (tails) when the body fails."""
    async with process_mesh(tmp_path / "mesh", settings) as mesh:
        try:
            yield mesh
        except BaseException:
            print(mesh.all_log_tails(lines=40))
            raise
