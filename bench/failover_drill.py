"""Failover drill: start a process mesh, create sessions, kill -9 the busiest node, and time
how long until every session is READY again on the survivors.

::

    .venv/bin/python -m bench.failover_drill --sessions 300 --nodes 3 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.tracing_settings import TRACED_ENVIRONMENT
from testkit import (
    MeshSettings,
    account_of,
    plan_sessions,
    running_process_mesh,
    start_sessions,
    wait_all_ready,
)


@dataclass(frozen=True)
class DrillResult:
    """What one drill measured."""

    nodes: int
    sessions: int
    workspaces: int
    lease_ttl_seconds: int
    killed_node: str
    sessions_on_killed_node: int
    failover_seconds: float
    """From SIGKILL until the last of the killed node's sessions was live again on the
    network (simnet's record of when each account's new connection went live: READY)."""
    observed_seconds: float
    """From SIGKILL until polling GetSession through the gateway had seen every session
    READY on a survivor (the poller's own latency included)."""
    new_qr_codes: int
    """QR codes shown for the killed node's sessions during the failover (should be 0)."""
    max_concurrent_live: int
    """Most live connections any account ever had (should be 1)."""
    replaced: int
    """simnet's connection_replaced events (should be 0)."""


async def run_drill(
    *,
    state_dir: Path,
    node_count: int,
    session_count: int,
    workspace_count: int,
    lease_ttl_seconds: int,
    timeout_seconds: float,
) -> DrillResult:
    """Run one drill in ``state_dir``; every process is stopped before it returns."""
    # Survivors must be able to hold every session between them.
    settings = MeshSettings(
        node_count=node_count,
        lease_ttl_seconds=lease_ttl_seconds,
        max_sessions=max(500, session_count),
        environment=TRACED_ENVIRONMENT,  # tracing on, sampled, as in the other scenarios
    )
    sessions = plan_sessions(workspace_count=workspace_count, session_count=session_count)
    # running_process_mesh prints every process's log tail if this fails.
    async with running_process_mesh(state_dir, settings) as mesh:
        placed = await start_sessions(mesh, sessions, timeout_seconds=120)
        victim, victim_count = Counter(placed.values()).most_common(1)[0]
        before = await mesh.simnet_stats(include_ids=False)

        its_sessions = [key for key, node_id in placed.items() if node_id == victim]
        await mesh.kill_node(victim)
        killed_at, killed_wall = time.monotonic(), time.time()
        # Polled: the killed node's sessions (the others never went down).
        await wait_all_ready(
            mesh.gateway_address, its_sessions, timeout_seconds=timeout_seconds, not_on=victim
        )
        observed_seconds = time.monotonic() - killed_at
        await wait_all_ready(mesh.gateway_address, sessions, timeout_seconds=timeout_seconds)

        after = await mesh.simnet_stats(include_ids=False)
    moved = [account_of(key) for key, node_id in placed.items() if node_id == victim]
    back_live = max(after["accounts"][account]["last_live_at"] for account in moved)
    new_qr = sum(
        after["accounts"][a]["qr_issued"] - before["accounts"][a]["qr_issued"] for a in moved
    )
    return DrillResult(
        nodes=node_count,
        sessions=session_count,
        workspaces=workspace_count,
        lease_ttl_seconds=lease_ttl_seconds,
        killed_node=victim,
        sessions_on_killed_node=victim_count,
        failover_seconds=round(back_live - killed_wall, 3),
        observed_seconds=round(observed_seconds, 3),
        new_qr_codes=new_qr,
        max_concurrent_live=int(after["max_concurrent_live"]),
        replaced=int(after["replaced"]),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m bench.failover_drill``."""
    parser = argparse.ArgumentParser(prog="python -m bench.failover_drill", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--workspaces", type=int, default=60)
    parser.add_argument("--lease-ttl-seconds", type=int, default=2)
    parser.add_argument("--timeout-seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes: a failover needs at least 2 nodes")
    with tempfile.TemporaryDirectory(prefix="failover-drill-") as state_dir:
        try:
            result = asyncio.run(
                run_drill(
                    state_dir=Path(state_dir),
                    node_count=args.nodes,
                    session_count=args.sessions,
                    workspace_count=args.workspaces,
                    lease_ttl_seconds=args.lease_ttl_seconds,
                    timeout_seconds=args.timeout_seconds,
                )
            )
        except (TimeoutError, RuntimeError) as error:
            # The mesh never recovered (or never started): say so in one line, exit non-zero.
            print(f"failover drill failed: {error}", file=sys.stderr)
            raise SystemExit(1) from None
    if args.json:
        print(json.dumps(asdict(result), sort_keys=True))
        return
    print(
        f"killed {result.killed_node} ({result.sessions_on_killed_node} of {result.sessions} "
        f"sessions, {result.nodes} nodes, lease TTL {result.lease_ttl_seconds}s)\n"
        f"every session READY again after {result.failover_seconds:.2f}s\n"
        f"new QR codes: {result.new_qr_codes}, max live connections per account: "
        f"{result.max_concurrent_live}, connection_replaced: {result.replaced}"
    )


if __name__ == "__main__":
    main()
