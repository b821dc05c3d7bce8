"""A node whose storage stops answering (a hung mount, as that one node sees it) serves
NOT_SERVING and gives its slots up within the storage deadline plus a lease refresh, the
survivors restore its sessions, and it rejoins once its storage answers again."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testkit import (
    MeshSettings,
    ProcessMesh,
    assert_never_two_live,
    eventually,
    plan_sessions,
    running_process_mesh,
    start_sessions,
    wait_all_ready,
)

LEASE_TTL_SECONDS = 2
STORAGE_TIMEOUT_SECONDS = 1.5
GIVE_UP_BOUND_SECONDS = STORAGE_TIMEOUT_SECONDS + 2.0 + LEASE_TTL_SECONDS + 3.0
"""The storage deadline, a health probe (every 2 s), one lease refresh interval, and a
generous margin for a loaded 2-core machine."""
SESSIONS = plan_sessions(workspace_count=24, session_count=48)


async def _health(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


async def _members(mesh: ProcessMesh) -> set[str]:
    return set(await mesh.node_records())


@pytest.mark.slow
class TestHungStorage:
    """One node's fsyncs hang (``testkit.blockable_node``, SIGUSR2), then answer again."""

    @pytest.mark.timeout(180)
    async def test_gives_its_slots_up_and_rejoins(self, tmp_path: Path) -> None:
        settings = MeshSettings(
            node_count=3,
            lease_ttl_seconds=LEASE_TTL_SECONDS,
            node_module="testkit.blockable_node",
            extra_node_flags=("--storage-timeout-seconds", str(STORAGE_TIMEOUT_SECONDS)),
        )
        async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
            placed = await start_sessions(mesh, SESSIONS)
            stuck = Counter(placed.values()).most_common(1)[0][0]
            address = mesh.node_addresses[stuck]
            assert await _health(address) == "SERVING"

            mesh.toggle_node_storage(stuck)
            hung_at = time.monotonic()
            await eventually(
                lambda: _members_without(mesh, stuck),
                timeout_seconds=GIVE_UP_BOUND_SECONDS,
                message=f"{stuck} gave its lease up",
            )
            gave_up_seconds = time.monotonic() - hung_at
            assert await _health(address) == "NOT_SERVING"
            after = await wait_all_ready(mesh.gateway_address, SESSIONS, timeout_seconds=30)
            assert stuck not in set(after.values()), "a session still runs on the stuck node"
            print(f"{stuck} gave its slots up {gave_up_seconds:.2f} s after its storage hung")

            mesh.toggle_node_storage(stuck)  # the mount answers again
            await eventually(
                lambda: _members_with(mesh, stuck),
                timeout_seconds=30,
                message=f"{stuck} rejoined",
            )
            assert await _health(address) == "SERVING"
            await wait_all_ready(mesh.gateway_address, SESSIONS, timeout_seconds=30)
            assert_never_two_live(await mesh.simnet_stats(), SESSIONS)


async def _members_without(mesh: ProcessMesh, node_id: str) -> bool:
    return node_id not in await _members(mesh)


async def _members_with(mesh: ProcessMesh, node_id: str) -> bool:
    return node_id in await _members(mesh)
