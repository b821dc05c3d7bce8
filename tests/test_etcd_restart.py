"""etcd restart: stop etcd and start it on the same ports and data dir; nodes keep their
sessions (no session leaves READY, no new QR, no second connection) and the gateway keeps
routing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from protos import session_pb2, session_pb2_grpc
from registry import stop_task
from testkit import (
    LoadClient,
    MeshSettings,
    OwnershipMonitor,
    SessionKey,
    account_of,
    assert_exactly_once,
    assert_never_two_live,
    chaos_sizes,
    eventually,
    plan_sessions,
    running_process_mesh,
    start_sessions,
    wait_all_delivered,
    wait_all_ready,
)

READY = session_pb2.SESSION_STATE_READY
# etcd's restart must stay well inside the lease TTL: a node that cannot refresh its lease
# for longer fences itself (stops its sessions), which is the right behaviour, not this test.
LEASE_TTL_SECONDS = 5


class _StateWatch:
    """WatchSession on every session through the gateway; records every state change."""

    def __init__(self, gateway_address: str, sessions: Sequence[SessionKey]) -> None:
        self._channel = grpc.aio.insecure_channel(gateway_address)
        self._stub = session_pb2_grpc.SessionServiceStub(self._channel)
        self.snapshots: dict[SessionKey, int] = {}
        self.changes: list[tuple[SessionKey, str, str]] = []
        self.broken: list[tuple[SessionKey, str]] = []
        self._tasks = [asyncio.create_task(self._watch(key)) for key in sessions]

    async def _watch(self, key: SessionKey) -> None:
        request = session_pb2.WatchSessionRequest(workspace_id=key[0], session_id=key[1])
        try:
            async for event in self._stub.WatchSession(request):
                kind = event.WhichOneof("event")
                if kind == "snapshot":
                    self.snapshots[key] = event.snapshot.state
                elif kind == "state_changed":
                    state = session_pb2.SessionState.Name(event.state_changed.state)
                    self.changes.append((key, state, event.state_changed.reason))
            self.broken.append((key, "stream ended"))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.broken.append((key, f"{error.code().name}: {error.details()}"))

    async def close(self) -> None:
        await asyncio.gather(*(stop_task(task) for task in self._tasks))
        await self._channel.close(None)


@pytest.mark.slow
class TestEtcdRestart:
    """etcd goes away for about a second under load and comes back with its data."""

    @pytest.mark.timeout(180)
    async def test_sessions_stay_and_the_gateway_keeps_routing(self, tmp_path: Path) -> None:
        size = chaos_sizes()
        sessions = plan_sessions(
            workspace_count=size.workspace_count, session_count=size.session_count
        )
        settings = MeshSettings(node_count=size.node_count, lease_ttl_seconds=LEASE_TTL_SECONDS)
        async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
            placed = await start_sessions(mesh, sessions)
            before = await mesh.simnet_stats(include_ids=False)
            ownership = OwnershipMonitor(mesh)  # sampled by hand, before and after
            owners_before = (await ownership.sample()).owners

            watch = _StateWatch(mesh.gateway_address, sessions)
            try:
                await wait_snapshots(watch, len(sessions))
                async with LoadClient(
                    mesh.gateway_address, sessions, worker_count=size.load_workers
                ) as load:
                    await load.wait_for_acks(size.session_count // 4)
                    down_seconds = await mesh.restart_etcd()
                    print(f"etcd was down {down_seconds:.2f}s")
                    assert down_seconds < 2.0, (
                        f"etcd restart took {down_seconds:.2f}s, not about 1 s"
                    )
                    acks_at_restart = load.report.acked_count
                    failures_during_restart = len(load.report.failures)
                    await load.wait_for_acks(size.session_count // 2)
                    # Nodes are still members after the restart: their leases survived.
                    await mesh.wait_membership(timeout_seconds=5)
                report = load.report
                after_placed = await wait_all_ready(
                    mesh.gateway_address, sessions, timeout_seconds=10
                )
            finally:
                await watch.close()

            assert not watch.changes and not watch.broken, (
                f"{len(watch.changes)} state changes (e.g. {watch.changes[:5]}), "
                f"{len(watch.broken)} watch streams ended (e.g. {watch.broken[:3]})"
            )
            assert after_placed == placed, "sessions moved although no node changed"
            owners_after = (await ownership.sample()).owners
            assert owners_before, "no owners/ keys: ownership is not in etcd"
            assert owners_after == owners_before, "slot ownership changed across the restart"
            assert report.acked_count > acks_at_restart
            assert not report.failures, (
                f"{failures_during_restart} calls failed while etcd restarted, "
                f"{len(report.failures) - failures_during_restart} after: "
                + report.failure_summary()
            )

            stats = await wait_all_delivered(mesh, report)
            assert_exactly_once(stats, report)
            assert_never_two_live(stats, sessions)
            qr_before = {
                account_of(k): before["accounts"][account_of(k)]["qr_issued"] for k in sessions
            }
            qr_after = {
                account_of(k): stats["accounts"][account_of(k)]["qr_issued"] for k in sessions
            }
            assert qr_after == qr_before, "a session showed a new QR code"


async def wait_snapshots(watch: _StateWatch, count: int) -> None:
    """Wait until every watch stream delivered its first snapshot, all READY."""
    await eventually(
        lambda: len(watch.snapshots) == count and set(watch.snapshots.values()) == {READY},
        timeout_seconds=15,
        message="every WatchSession snapshot READY",
    )
