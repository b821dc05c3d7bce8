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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.tracing_settings import TRACED_ENVIRONMENT
from protos import session_pb2
from testkit import (
    MeshSettings,
    SessionKey,
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
    ready_timeline: dict[str, Any]
    """Sessions READY per node over time (:meth:`ReadyTimeline.as_dict`), for the figure."""


READY = session_pb2.SESSION_STATE_READY


class ReadyTimeline:
    """Sessions READY per node after the kill, sampled from the drill's own polls: every
    answer of GetSession through the gateway updates what is known of its session, and a
    sample counts, per node, the sessions last seen READY there. The killed node serves nothing
    from the kill on (an answer naming it is stale), so its sessions count as READY nowhere
    until an answer shows one READY on a survivor; they are polled until all are. The
    survivors' own sessions count as READY where they were placed (they never went down) until
    the last poll, which asks about every session.

    Counts are kept as answers arrive (no recount: the drill's own timing stays as it was), and
    a sample is added only when a count changed, answers less than ``RESOLUTION_SECONDS``
    after the sample before them folded into it: a few dozen samples for a failover."""

    RESOLUTION_SECONDS = 0.05

    def __init__(self, placed: dict[SessionKey, str], nodes: Iterable[str]) -> None:
        self._latest: dict[SessionKey, str] = dict(placed)
        """Per session, the node it was last seen READY on ("" when it was not READY)."""
        self._counts: Counter[str] = Counter(placed.values())
        self._killed_at = 0.0
        self._killed_node = ""
        self._bucket_started = 0.0
        self.seconds: list[float] = []
        """When each sample was taken, seconds after the kill (0: just before it)."""
        self.ready_by_node: dict[str, list[int]] = {node: [] for node in sorted(nodes)}
        """Per node, its sessions READY at each sample."""

    def killed(self, node_id: str, at_monotonic: float) -> None:
        """``node_id`` was killed at ``at_monotonic``: two samples at 0 s, the placement as it
        stood, then without the killed node's sessions."""
        self._killed_at, self._killed_node = at_monotonic, node_id
        self._append(0.0)
        for key, ready_on in self._latest.items():
            if ready_on == node_id:
                self._latest[key] = ""
        self._counts[node_id] = 0
        self._append(0.0)

    def record(self, key: SessionKey, answer: tuple[int, str]) -> None:
        """One answer (``wait_all_ready``'s ``on_answer``): ``(state, node_id)`` or
        ``(-1, error)``; a sample when it changed a count."""
        state, node_id = answer
        ready_on = node_id if state == READY and node_id != self._killed_node else ""
        before = self._latest.get(key, "")
        if ready_on == before:
            return
        self._latest[key] = ready_on
        if before:
            self._counts[before] -= 1
        if ready_on:
            self._counts[ready_on] += 1
        seconds = round(time.monotonic() - self._killed_at, 3)
        if len(self.seconds) > 2 and seconds - self._bucket_started < self.RESOLUTION_SECONDS:
            self.seconds[-1] = seconds  # folded into the last sample, which now ends here
            for node, series in self.ready_by_node.items():
                series[-1] = self._counts[node]
        else:
            self._bucket_started = seconds
            self._append(seconds)

    def _append(self, seconds: float) -> None:
        for node in self._counts.keys() - self.ready_by_node.keys():
            self.ready_by_node[node] = [0] * len(self.seconds)
        self.seconds.append(seconds)
        for node, series in self.ready_by_node.items():
            series.append(self._counts[node])

    def as_dict(self) -> dict[str, Any]:
        """``{"seconds": [...], "ready_by_node": {node: [...]}}``: JSON as it is."""
        return {
            "seconds": list(self.seconds),
            "ready_by_node": {node: list(series) for node, series in self.ready_by_node.items()},
        }


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
        timeline = ReadyTimeline(placed, mesh.node_addresses)
        await mesh.kill_node(victim)
        killed_at, killed_wall = time.monotonic(), time.time()
        timeline.killed(victim, killed_at)
        # Polled: the killed node's sessions (the others never went down).
        await wait_all_ready(
            mesh.gateway_address,
            its_sessions,
            timeout_seconds=timeout_seconds,
            not_on=victim,
            on_answer=timeline.record,
        )
        observed_seconds = time.monotonic() - killed_at
        await wait_all_ready(
            mesh.gateway_address,
            sessions,
            timeout_seconds=timeout_seconds,
            on_answer=timeline.record,
        )

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
        ready_timeline=timeline.as_dict(),
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
