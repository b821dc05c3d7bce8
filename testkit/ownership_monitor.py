"""Watching ownership from outside: an :class:`OwnershipMonitor` samples ``owners/`` and
``nodes/`` in one etcd read and records what should never happen; helpers wait until the owners
map follows the ring."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from registry import Ring, slot_of, stop_task
from testkit.process_mesh import ProcessMesh
from testkit.workload import SessionKey, create_sessions, wait_all_ready


@dataclass(frozen=True)
class OwnerSample:
    """One consistent read (one etcd revision) of ``owners/`` and ``nodes/``."""

    at_monotonic: float
    revision: int
    owners: dict[int, tuple[str, int]]
    """slot → (node_id, epoch)."""
    members: frozenset[str]


@dataclass
class OwnershipMonitor:
    """Samples the owners map every ``interval_seconds`` (one range read over the cluster root,
    so owners and members come from one revision) and records every violation it sees."""

    mesh: ProcessMesh
    interval_seconds: float = 0.05
    samples: list[OwnerSample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    read_errors: int = 0
    _task: asyncio.Task[None] | None = None
    _last_epoch: dict[int, tuple[str, int]] = field(default_factory=dict)

    async def __aenter__(self) -> OwnershipMonitor:
        await self.sample()
        self._task = asyncio.create_task(self._run(), name="ownership-monitor")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # etcd restarting: a gap in the samples, not a verdict
                self.read_errors += 1
            await asyncio.sleep(self.interval_seconds)

    async def sample(self) -> OwnerSample:
        """Take one sample, check it, and keep it."""
        assert self.mesh.etcd is not None
        keys = self.mesh.keys
        async with asyncio.timeout(2):
            response = await self.mesh.etcd.get_prefix(keys.root)
        owners: dict[int, tuple[str, int]] = {}
        members: set[str] = set()
        for item in response:
            key = bytes(item.key)
            if key.startswith(keys.owners_prefix):
                slot = int(key[len(keys.owners_prefix) :])
                owner = json.loads(item.value)["node_id"]
                owners[slot] = (owner, int(item.create_revision))
            elif key.startswith(keys.nodes_prefix):
                members.add(keys.node_id_of(key))
        found = OwnerSample(
            time.monotonic(), int(response.header.revision), owners, frozenset(members)
        )
        self._check(found)
        self.samples.append(found)
        return found

    def _check(self, sample: OwnerSample) -> None:
        for slot, (owner, epoch) in sample.owners.items():
            if owner not in sample.members:
                # Owner keys live under the owner's node lease: they vanish together.
                self.violations.append(
                    f"rev {sample.revision}: slot {slot} owned by {owner}, not a member"
                )
            previous = self._last_epoch.get(slot)
            if previous is not None and epoch < previous[1]:
                self.violations.append(
                    f"rev {sample.revision}: slot {slot} epoch went back {previous} → "
                    f"{(owner, epoch)}"
                )
            if previous is not None and epoch == previous[1] and owner != previous[0]:
                self.violations.append(
                    f"rev {sample.revision}: slot {slot} epoch {epoch} names two owners "
                    f"{previous[0]} and {owner}"
                )
            self._last_epoch[slot] = (owner, epoch)

    def owner_changes(self) -> dict[int, list[tuple[str, int]]]:
        """Per slot, the distinct ``(owner, epoch)`` holdings seen, in order (orphan gaps
        left out)."""
        history: dict[int, list[tuple[str, int]]] = {}
        for sample in self.samples:
            for slot, holding in sample.owners.items():
                seen = history.setdefault(slot, [])
                if not seen or seen[-1] != holding:
                    seen.append(holding)
        return history

    def latest(self) -> OwnerSample:
        """The most recent sample."""
        return self.samples[-1]


async def ring_placement(mesh: ProcessMesh, slots: Sequence[int]) -> dict[int, str | None]:
    """Where the ring over the current members (active ones) places each slot."""
    ring = Ring((await mesh.node_records()).values())
    return {slot: ring.node_for_slot(slot) for slot in slots}


async def wait_owners_follow_ring(
    mesh: ProcessMesh, monitor: OwnershipMonitor, slots: Sequence[int], *, timeout_seconds: float
) -> dict[int, str]:
    """Wait until each of ``slots`` is owned by the node the ring gives it; the owners then."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        expected = await ring_placement(mesh, slots)
        owners = {slot: holding[0] for slot, holding in (await monitor.sample()).owners.items()}
        wrong = {s: (owners.get(s), expected[s]) for s in slots if owners.get(s) != expected[s]}
        if not wrong:
            return {slot: owners[slot] for slot in slots}
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(wrong)} slots not owned as the ring places them after "
                f"{timeout_seconds}s ((owner, ring) e.g. {dict(list(wrong.items())[:5])})"
            )
        await asyncio.sleep(0.05)


async def start_sessions(
    mesh: ProcessMesh, sessions: Sequence[SessionKey], *, timeout_seconds: float = 60.0
) -> dict[SessionKey, str]:
    """Create the sessions, wait until all are READY and until their slots are owned where the
    ring places them (the mesh has settled); where each session runs."""
    await create_sessions(mesh.gateway_address, sessions)
    await wait_all_ready(mesh.gateway_address, sessions, timeout_seconds=timeout_seconds)
    # Only slots that hold workspaces need an owner ahead of calls, so wait for those.
    monitor = OwnershipMonitor(mesh)
    slots = sorted({slot_of(ws) for ws, _ in sessions})
    await wait_owners_follow_ring(mesh, monitor, slots, timeout_seconds=30)
    # Asked again: a session may have moved while the owners settled.
    return await wait_all_ready(mesh.gateway_address, sessions, timeout_seconds=timeout_seconds)
