"""The faults of a chaos run: a seeded random schedule, and the code that inflicts each one on
a running process mesh.

The schedule is drawn in rounds: each round holds every kind of fault once, in a random order,
with random targets, lengths and gaps, so even a one-round run meets them all. One fault runs
at a time and ends (the process restarted, resumed, the storage answering) before the next
begins — but the gap is short and random, so the next fault often lands while the mesh is
still recovering from the last one (restores running, leases being granted).
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
import signal
from dataclasses import dataclass

from testkit.private_postgres import PrivatePostgres
from testkit.process_mesh import ProcessMesh


class FaultKind(enum.Enum):
    """What a fault does."""

    KILL_NODE = "kill_node"
    """kill -9 a node, start it again after a while (its lease must expire first)."""
    PAUSE_NODE = "pause_node"
    """SIGSTOP a node for less than its lease TTL, then SIGCONT (a busy node is not dead)."""
    FREEZE_NODE = "freeze_node"
    """SIGSTOP a node for longer than its lease TTL: the others take its slots over while it
    still holds its connections; on SIGCONT it must find itself fenced and write nothing."""
    KILL_ETCD = "kill_etcd"
    """kill -9 one etcd member (quorum stays), start it again on its data."""
    PAUSE_ETCD = "pause_etcd"
    """SIGSTOP one etcd member (a blackhole: connections stay open, nothing answers)."""
    RESTART_DB = "restart_db"
    """Crash the accounts DB (PostgreSQL, immediate mode) and start it again."""
    STALL_STORAGE = "stall_storage"
    """Make one node's storage hang (every fsync waits), then answer again."""


@dataclass(frozen=True)
class Fault:
    """One fault of the schedule."""

    at_seconds: float
    """When it starts, from the start of the chaos."""
    kind: FaultKind
    target: str
    """A node id, an etcd member's index, or ``db``."""
    seconds: float
    """How long the fault lasts (down, paused, stalled)."""

    def describe(self) -> str:
        """One line: ``+12.3s kill_node node-2 for 1.8s``."""
        kind, target = self.kind.value, self.target
        return f"+{self.at_seconds:5.1f}s {kind:<13} {target:<8} for {self.seconds:.1f}s"


def plan_faults(
    *,
    seed: int,
    rounds: int,
    node_ids: list[str],
    etcd_members: int,
    lease_ttl_seconds: float,
) -> list[Fault]:
    """``rounds`` rounds of every fault kind (see the module docstring); ``at_seconds`` assumes
    each fault takes its ``seconds`` plus a few for the restart, so it is a plan: the run
    records when each one really happened."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    at = rng.uniform(1.0, 2.0)
    for _ in range(rounds):
        kinds = list(FaultKind)
        rng.shuffle(kinds)
        for kind in kinds:
            seconds, target = _draw(kind, rng, node_ids, etcd_members, lease_ttl_seconds)
            faults.append(Fault(round(at, 1), kind, target, round(seconds, 1)))
            at += seconds + rng.uniform(0.5, 2.0)
    return faults


def _draw(
    kind: FaultKind,
    rng: random.Random,
    node_ids: list[str],
    etcd_members: int,
    lease_ttl_seconds: float,
) -> tuple[float, str]:
    node = rng.choice(node_ids)
    member = str(rng.randint(1, etcd_members))
    if kind is FaultKind.KILL_NODE:
        return rng.uniform(0.5, 3.0), node
    if kind is FaultKind.PAUSE_NODE:
        return rng.uniform(0.2, lease_ttl_seconds / 3), node
    if kind is FaultKind.FREEZE_NODE:
        return lease_ttl_seconds + rng.uniform(1.0, 2.5), node
    if kind is FaultKind.KILL_ETCD:
        return rng.uniform(1.0, 4.0), member
    if kind is FaultKind.PAUSE_ETCD:
        return rng.uniform(1.0, 4.0), member
    if kind is FaultKind.RESTART_DB:
        return rng.uniform(0.5, 3.0), "db"
    return rng.uniform(3.0, 5.0), node  # STALL_STORAGE


async def inflict(fault: Fault, mesh: ProcessMesh, database: PrivatePostgres) -> None:
    """Inflict ``fault`` and end it: returns once the part is back (restarted, resumed)."""
    kind, target, seconds = fault.kind, fault.target, fault.seconds
    if kind is FaultKind.KILL_NODE:
        await mesh.kill_node(target)
        await asyncio.sleep(seconds)
        await mesh.start_node(target)
    elif kind in (FaultKind.PAUSE_NODE, FaultKind.FREEZE_NODE):
        pid = mesh.process_id(target)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
    elif kind is FaultKind.KILL_ETCD:
        await mesh.etcd_cluster.member(int(target)).kill()
        await asyncio.sleep(seconds)
        await mesh.etcd_cluster.start_member(int(target))
    elif kind is FaultKind.PAUSE_ETCD:
        mesh.etcd_cluster.pause_member(int(target))
        try:
            await asyncio.sleep(seconds)
        finally:
            mesh.etcd_cluster.resume_member(int(target))
    elif kind is FaultKind.RESTART_DB:
        await database.crash_and_restart(down_seconds=seconds)
    else:  # STALL_STORAGE
        mesh.toggle_node_storage(target)
        try:
            await asyncio.sleep(seconds)
        finally:
            mesh.toggle_node_storage(target)
