"""A chaos run: a process mesh under a client that creates, sends and watches, while a seeded
random schedule kills and pauses its nodes and etcd members, crashes its database and stalls
its storage (:mod:`testkit.chaos_faults`). At the end simnet's record must show

- every acknowledged message delivered exactly once — and, since the client retries every
  send it got no answer for with the same id (:mod:`testkit.chaos_client`), every message it
  ever sent acknowledged in the end;
- no account ever with two live connections; a "connection replaced" only where a node was
  frozen past its lease (it still held its connections when the others took its sessions
  over), at most once per account and freeze: never a reconnect loop;
- every session READY, and none of those paired before the chaos shown a new QR code.

``python -m testkit.chaos`` (``make chaos``: the full size) prints the schedule, the faults
survived and the figures, and exits 1 if a check failed; ``tests/test_chaos.py`` runs the
reduced size in ``make test``. ``--seed`` replays a schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testkit.chaos_client import ChaosClient, ClientFigures
from testkit.chaos_faults import Fault, FaultKind, inflict, plan_faults
from testkit.ground_truth import assert_exactly_once, wait_all_delivered
from testkit.ownership_monitor import start_sessions
from testkit.private_postgres import PrivatePostgres, running_private_postgres
from testkit.process_mesh import MeshSettings, ProcessMesh, running_process_mesh
from testkit.sizes import is_full_size
from testkit.workload import SessionKey, account_of, plan_sessions, wait_all_ready

SEED_VARIABLE = "CHAOS_SEED"
READY_TIMEOUT_SECONDS = 120.0
"""How long after the last fault every session has to be READY again."""
DELIVERY_TIMEOUT_SECONDS = 60.0
FAULT_END_MARGIN_SECONDS = 60.0
"""A fault that has not ended (its process back) this long after its length is a failure."""


@dataclass(frozen=True)
class ChaosPlan:
    """The size and schedule of a chaos run."""

    seed: int
    rounds: int
    """Rounds of the schedule: each holds every kind of fault once."""
    node_count: int
    workspace_count: int
    session_count: int
    """Sessions created (and READY) before the chaos starts."""
    send_workers: int
    watchers: int
    create_every_seconds: float
    """The client creates one more session this often during the chaos."""
    lease_ttl_seconds: int = 3
    storage_timeout_seconds: float = 2.0
    etcd_members: int = 3


def chaos_plan(*, seed: int | None = None, full: bool | None = None) -> ChaosPlan:
    """The reduced plan (``make test``) or the full one (``SESSIONMESH_FULL=1``, ``make
    chaos``); the seed from ``seed``, else ``CHAOS_SEED``, else a random one."""
    if seed is None:
        seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(1 << 31))
    if is_full_size() if full is None else full:
        return ChaosPlan(
            seed=seed,
            rounds=5,
            node_count=4,
            workspace_count=60,
            session_count=200,
            send_workers=24,
            watchers=16,
            create_every_seconds=2.0,
        )
    return ChaosPlan(
        seed=seed,
        rounds=1,
        node_count=3,
        workspace_count=20,
        session_count=40,
        send_workers=8,
        watchers=4,
        create_every_seconds=4.0,
    )


@dataclass(frozen=True)
class FaultRecord:
    """A fault as it really happened."""

    fault: Fault
    started_at: float
    """Seconds from the start of the chaos."""
    ended_at: float
    error: str = ""
    """Why it could not be inflicted or ended (empty: it was)."""


@dataclass
class ChaosReport:
    """What a chaos run did and found; ``problems`` empty means every check passed."""

    plan: ChaosPlan
    faults: list[FaultRecord] = field(default_factory=list)
    client: ClientFigures = field(default_factory=ClientFigures)
    sessions: int = 0
    created_during_chaos: int = 0
    chaos_seconds: float = 0.0
    recovery_seconds: float = -1.0
    """From the end of the last fault until every session was READY (-1: never)."""
    fences: int = 0
    failovers: int = 0
    database_restarts: int = 0
    simnet: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    state_dir: str = ""

    def render(self) -> str:
        """The schedule, the faults survived, the figures and the verdict, for people."""
        figures = self.client
        lines = [
            f"chaos run, seed {self.plan.seed} (replay: CHAOS_SEED={self.plan.seed}): "
            f"{self.plan.node_count} nodes, {self.plan.etcd_members} etcd members, PostgreSQL, "
            f"{self.sessions} sessions ({self.created_during_chaos} created during the chaos)",
            "",
            "schedule (start as it happened, kind, target, length):",
        ]
        for record in self.faults:
            fault = record.fault
            lines.append(
                f"  {fault.kind.value:<13} {fault.target:<7} for {fault.seconds:3.1f}s  "
                f"at +{record.started_at:5.1f}s, back at +{record.ended_at:5.1f}s"
                + (f"  FAILED: {record.error}" if record.error else "")
            )
        kinds: dict[str, int] = {}
        for record in self.faults:
            if not record.error:
                kinds[record.fault.kind.value] = kinds.get(record.fault.kind.value, 0) + 1
        failed = ", ".join(f"{code} x{count}" for code, count in figures.failed_calls.most_common())
        lines += [
            "",
            f"faults survived: {sum(kinds.values())} of {len(self.faults)} "
            f"({', '.join(f'{kind} x{count}' for kind, count in sorted(kinds.items()))}) "
            f"in {self.chaos_seconds:.0f} s",
            f"messages: {figures.messages} sent, "
            f"{figures.acked_first_try} acknowledged at the first call, "
            f"{figures.retried_messages} after retries with the same id; "
            f"{figures.sends} SendMessage calls",
            f"send latency: p50 {figures.latency(0.5) * 1000:.0f} ms, "
            f"p99 {figures.latency(0.99) * 1000:.0f} ms, "
            f"max {max(figures.send_latencies, default=0) * 1000:.0f} ms",
            f"failed calls (each retried): {failed or 'none'}",
            f"reads {figures.gets}, creates {figures.creates}, watch streams "
            f"{figures.watch_streams} with {figures.watch_events} events",
            f"fence events (node or slots) {self.fences}, failovers {self.failovers}, "
            f"database restarts {self.database_restarts}",
            f"all sessions READY {self.recovery_seconds:.1f} s after the last fault"
            if self.recovery_seconds >= 0
            else "sessions never all READY again",
            "simnet: " + ", ".join(f"{key} {value}" for key, value in self.simnet.items()),
            "",
        ]
        if self.problems:
            lines.append(f"FAILED ({len(self.problems)} problems); logs in {self.state_dir}:")
            lines += [f"  - {problem}" for problem in self.problems]
        else:
            lines.append(
                "PASSED: every message acknowledged and delivered exactly once, never two live "
                "connections, every session READY without a new QR"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-able data (``--json``)."""
        figures = self.client
        return {
            "plan": asdict(self.plan),
            "faults": [
                {
                    "kind": record.fault.kind.value,
                    "target": record.fault.target,
                    "seconds": record.fault.seconds,
                    "started_at": round(record.started_at, 2),
                    "ended_at": round(record.ended_at, 2),
                    "error": record.error,
                }
                for record in self.faults
            ],
            "messages": figures.messages,
            "acked_first_try": figures.acked_first_try,
            "retried_messages": figures.retried_messages,
            "send_calls": figures.sends,
            "failed_calls": dict(figures.failed_calls),
            "send_latency_p50_ms": round(figures.latency(0.5) * 1000, 1),
            "send_latency_p99_ms": round(figures.latency(0.99) * 1000, 1),
            "watch_streams": figures.watch_streams,
            "watch_events": figures.watch_events,
            "sessions": self.sessions,
            "created_during_chaos": self.created_during_chaos,
            "chaos_seconds": round(self.chaos_seconds, 1),
            "recovery_seconds": round(self.recovery_seconds, 1),
            "fences": self.fences,
            "failovers": self.failovers,
            "database_restarts": self.database_restarts,
            "simnet": self.simnet,
            "problems": self.problems,
        }


async def run_chaos(state_dir: Path, plan: ChaosPlan) -> ChaosReport:
    """Run the chaos of ``plan`` on a fresh mesh under ``state_dir``; the report."""
    report = ChaosReport(plan=plan, state_dir=str(state_dir))
    async with running_private_postgres() as database:
        settings = MeshSettings(
            node_count=plan.node_count,
            lease_ttl_seconds=plan.lease_ttl_seconds,
            etcd_members=plan.etcd_members,
            node_module="testkit.blockable_node",
            database_url=database.url,
            extra_node_flags=("--storage-timeout-seconds", str(plan.storage_timeout_seconds)),
        )
        async with running_process_mesh(state_dir, settings) as mesh:
            try:
                await _run(mesh, database, plan, report)
            finally:
                await mesh.kill_all_nodes()  # no drain needed: the checks are done
    return report


async def _run(
    mesh: ProcessMesh, database: PrivatePostgres, plan: ChaosPlan, report: ChaosReport
) -> None:
    rng = random.Random(plan.seed)
    sessions = plan_sessions(workspace_count=plan.workspace_count, session_count=plan.session_count)
    await start_sessions(mesh, sessions)
    qr_before = _qr_issued(await mesh.simnet_stats(include_ids=False), sessions)
    client = ChaosClient(
        mesh.gateway_address,
        sessions,
        rng=random.Random(rng.random()),
        send_workers=plan.send_workers,
        watchers=plan.watchers,
        create_every_seconds=plan.create_every_seconds,
    )
    faults = plan_faults(
        seed=plan.seed,
        rounds=plan.rounds,
        node_ids=sorted(mesh.node_addresses),
        etcd_members=plan.etcd_members,
        lease_ttl_seconds=plan.lease_ttl_seconds,
    )
    await client.start()
    started = time.monotonic()
    for fault in faults:
        await asyncio.sleep(max(0.0, started + fault.at_seconds - time.monotonic()))
        report.faults.append(await _inflict(fault, mesh, database, started))
    last_fault_ended = time.monotonic()
    report.chaos_seconds = last_fault_ended - started
    await asyncio.sleep(2.0)  # traffic goes on a little after the last fault
    await client.stop_traffic()
    report.sessions = len(client.sessions)
    report.created_during_chaos = len(client.created_here)
    report.database_restarts = database.restarts
    report.client = client.figures
    try:
        await wait_all_ready(
            mesh.gateway_address, client.sessions, timeout_seconds=READY_TIMEOUT_SECONDS
        )
        report.recovery_seconds = time.monotonic() - last_fault_ended
    except TimeoutError as error:
        report.problems.append(f"not every session READY again: {error}")
    if client.unanswered_creates:
        report.problems.append(f"CreateSession never answered for {client.unanswered_creates}")
    unanswered = await client.finish()
    if unanswered:
        report.problems.append(
            f"{len(unanswered)} messages never got an answer, however often retried "
            f"(e.g. {unanswered[:5]})"
        )
    await _check_ground_truth(mesh, client, faults, qr_before, report)
    report.fences = len(mesh.events("node_fenced")) + len(mesh.events("slots_fenced"))
    report.failovers = sum(1 for event in mesh.events("slot_acquired") if event.get("failover"))
    for record in report.faults:
        if record.error:
            report.problems.append(f"{record.fault.describe()}: {record.error}")


async def _inflict(
    fault: Fault, mesh: ProcessMesh, database: PrivatePostgres, started: float
) -> FaultRecord:
    began = time.monotonic() - started
    error = ""
    try:
        async with asyncio.timeout(fault.seconds + FAULT_END_MARGIN_SECONDS):
            await inflict(fault, mesh, database)
    except Exception as failure:  # recorded as a problem of the run, not raised
        error = f"{type(failure).__name__}: {failure}"[:500]
    return FaultRecord(fault, began, time.monotonic() - started, error)


async def _check_ground_truth(
    mesh: ProcessMesh,
    client: ChaosClient,
    faults: list[Fault],
    qr_before: dict[str, int],
    report: ChaosReport,
) -> None:
    try:
        stats = await wait_all_delivered(
            mesh, client.report, timeout_seconds=DELIVERY_TIMEOUT_SECONDS
        )
        assert_exactly_once(stats, client.report)
    except AssertionError as error:
        report.problems.append(f"exactly once: {error}")
        stats = await mesh.simnet_stats()
    accounts: dict[str, dict[str, Any]] = stats["accounts"]
    report.simnet = {
        "deliveries": stats["deliveries"],
        "duplicate_deliveries": stats["duplicate_deliveries"],
        "resends_deduplicated": stats["resends"],
        "replaced": stats["replaced"],
        "max_concurrent_live": stats["max_concurrent_live"],
    }
    doubled = {
        a: c["max_concurrent_live"] for a, c in accounts.items() if c["max_concurrent_live"] > 1
    }
    if doubled:
        report.problems.append(f"accounts with two live connections at once: {doubled}")
    freezes = sum(1 for fault in faults if fault.kind is FaultKind.FREEZE_NODE)
    replaced = {a: c["replaced"] for a, c in accounts.items() if c["replaced"] > freezes}
    if replaced:
        report.problems.append(
            f"connections replaced more often than nodes were frozen ({freezes}): {replaced}"
        )
    new_qr = {
        account: accounts.get(account, {}).get("qr_issued", 0) - count
        for account, count in qr_before.items()
        if accounts.get(account, {}).get("qr_issued", 0) != count
    }
    if new_qr:
        report.problems.append(f"paired sessions shown a new QR code: {new_qr}")


def _qr_issued(stats: dict[str, Any], sessions: list[SessionKey]) -> dict[str, int]:
    accounts = stats["accounts"]
    return {
        account_of(key): accounts.get(account_of(key), {}).get("qr_issued", 0) for key in sessions
    }


def main() -> None:
    """``python -m testkit.chaos [--seed N] [--full | --reduced] [--json PATH]``."""
    parser = argparse.ArgumentParser(
        prog="python -m testkit.chaos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--seed", type=int, default=None, help=f"default: ${SEED_VARIABLE} or random"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--full",
        action="store_true",
        default=None,
        help="the full size (default with SESSIONMESH_FULL=1)",
    )
    size.add_argument(
        "--reduced", dest="full", action="store_false", help="the size make test runs"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    arguments = parser.parse_args()
    plan = chaos_plan(seed=arguments.seed, full=arguments.full)
    state_dir = Path(tempfile.mkdtemp(prefix=f"sessionmesh-chaos-{plan.seed}-"))
    print(f"chaos run, seed {plan.seed}: starting (logs in {state_dir})", flush=True)
    report = asyncio.run(run_chaos(state_dir, plan))
    print(report.render())
    if arguments.json is not None:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if report.problems:
        sys.exit(1)
    shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
