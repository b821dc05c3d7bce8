"""Scenario 5: failover — kill -9 the busiest node of a process mesh holding many sessions and
time until every session is READY again on the survivors (``bench.failover_drill``).

The figure is dominated by the lease TTL: a dead node is noticed when its etcd lease expires
(``lease_ttl_seconds``), then survivors take its slots and restore the sessions from storage
without a new QR code. The drill also reports what must stay zero: new QR codes for the moved
sessions and any account with two live connections at once.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.failover_drill import run_drill


@dataclass(frozen=True)
class FailoverSizes:
    """How big scenario 5 runs."""

    node_count: int
    session_count: int
    workspace_count: int
    lease_ttl_seconds: int
    timeout_seconds: float


FULL_FAILOVER_SIZES = FailoverSizes(
    node_count=3,
    session_count=1000,
    workspace_count=200,
    lease_ttl_seconds=2,
    timeout_seconds=60.0,
)
SMOKE_FAILOVER_SIZES = FailoverSizes(
    node_count=2,
    session_count=20,
    workspace_count=10,
    lease_ttl_seconds=2,
    timeout_seconds=30.0,
)


async def run_failover_scenario(sizes: FailoverSizes) -> dict[str, Any]:
    """One drill at ``sizes``; its result, with ``failover_seconds`` the headline."""
    with tempfile.TemporaryDirectory(prefix="sessionmesh-bench-failover-") as state_dir:
        result = await run_drill(
            state_dir=Path(state_dir),
            node_count=sizes.node_count,
            session_count=sizes.session_count,
            workspace_count=sizes.workspace_count,
            lease_ttl_seconds=sizes.lease_ttl_seconds,
            timeout_seconds=sizes.timeout_seconds,
        )
    return {
        **dataclasses.asdict(result),
        "baseline_lease_ttl_seconds": sizes.lease_ttl_seconds,
        "failover_over_lease_ttl": result.failover_seconds / sizes.lease_ttl_seconds,
    }
