"""A busy node is not a dead node, and a wedged node is: the heartbeat keeps a node's lease
while its event loop is blocked for longer than the fencing limit (60 % of the TTL) but less
than the stall limit; past the stall limit the node gives its lease up and the survivors
restore its sessions."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from testkit import (
    MeshSettings,
    ProcessMesh,
    account_of,
    plan_sessions,
    running_process_mesh,
    start_sessions,
    wait_all_ready,
)

LEASE_TTL_SECONDS = 2
STALL_LIMIT_SECONDS = 4
SESSIONS = plan_sessions(workspace_count=24, session_count=48)


def _settings() -> MeshSettings:
    return MeshSettings(
        node_count=3,
        lease_ttl_seconds=LEASE_TTL_SECONDS,
        node_module="testkit.blockable_node",
        extra_node_flags=("--loop-stall-limit-seconds", str(STALL_LIMIT_SECONDS)),
    )


async def _owners(mesh: ProcessMesh) -> dict[bytes, tuple[str, int]]:
    """Every owners/ key now: key → (holder, create revision)."""
    assert mesh.etcd is not None
    found: dict[bytes, tuple[str, int]] = {}
    for item in await mesh.etcd.get_prefix(mesh.keys.owners_prefix):
        found[item.key] = (item.value.decode(), item.create_revision)
    return found


def _held_by(owners: dict[bytes, tuple[str, int]], node_id: str) -> dict[bytes, int]:
    return {key: revision for key, (value, revision) in owners.items() if node_id in value}


@pytest.mark.slow
class TestBlockedLoop:
    """A node's event loop blocked on purpose (the heartbeat thread keeps running)."""

    @pytest.mark.timeout(120)
    async def test_blocked_past_the_fencing_limit_keeps_its_lease_and_slots(
        self, tmp_path: Path
    ) -> None:
        async with running_process_mesh(tmp_path / "mesh", _settings()) as mesh:
            placed = await start_sessions(mesh, SESSIONS)
            busy = Counter(placed.values()).most_common(1)[0][0]
            held_before = _held_by(await _owners(mesh), busy)
            assert held_before
            blocked_seconds = LEASE_TTL_SECONDS * 1.5  # well past 60 % of the TTL
            assert blocked_seconds > LEASE_TTL_SECONDS * 0.6
            assert blocked_seconds < STALL_LIMIT_SECONDS
            mesh.block_node_loop(busy, seconds=blocked_seconds)
            blocked_at = time.monotonic()
            # While blocked, and after: the keys stay where they were, under the same epochs.
            while time.monotonic() - blocked_at < blocked_seconds + 1.5:
                assert _held_by(await _owners(mesh), busy) == held_before
                await asyncio.sleep(0.2)
            after = await wait_all_ready(mesh.gateway_address, SESSIONS, timeout_seconds=20)
            assert after == placed  # nothing moved
            assert mesh.events("lease_fence") == []
            assert mesh.events("loop_stalled") == []
            stats = await mesh.simnet_stats(include_ids=False)
            assert stats["replaced"] == 0

    @pytest.mark.timeout(120)
    async def test_blocked_past_the_stall_limit_fails_over_to_the_survivors(
        self, tmp_path: Path
    ) -> None:
        async with running_process_mesh(tmp_path / "mesh", _settings()) as mesh:
            placed = await start_sessions(mesh, SESSIONS)
            wedged = Counter(placed.values()).most_common(1)[0][0]
            its_sessions = [key for key, node_id in placed.items() if node_id == wedged]
            before = await mesh.simnet_stats(include_ids=False)
            blocked_seconds = STALL_LIMIT_SECONDS + LEASE_TTL_SECONDS + 8
            mesh.block_node_loop(wedged, seconds=blocked_seconds)
            blocked_at = time.monotonic()
            # Its sessions come back on the survivors while it is still wedged.
            moved = await wait_all_ready(
                mesh.gateway_address,
                its_sessions,
                timeout_seconds=blocked_seconds - 2,
                not_on=wedged,
            )
            failover_seconds = time.monotonic() - blocked_at
            assert set(moved.values()) <= set(mesh.running_nodes) - {wedged}
            assert failover_seconds < STALL_LIMIT_SECONDS + LEASE_TTL_SECONDS + 4
            assert not _held_by(await _owners(mesh), wedged)
            assert [event["process"] for event in mesh.events("loop_stalled")] == [wedged]
            after = await mesh.simnet_stats(include_ids=False)
            # Restored from stored credentials: no session showed a QR code again.
            assert {
                account_of(key): after["accounts"][account_of(key)]["qr_issued"]
                for key in its_sessions
            } == {
                account_of(key): before["accounts"][account_of(key)]["qr_issued"]
                for key in its_sessions
            }
            # Once it runs again, it fences itself, takes a new lease and serves again.
            await asyncio.sleep(max(0.0, blocked_at + blocked_seconds - time.monotonic()))
            await mesh.wait_membership(timeout_seconds=20)
            every = await wait_all_ready(mesh.gateway_address, SESSIONS, timeout_seconds=30)
            assert set(every) == set(SESSIONS)
            fences = [event["process"] for event in mesh.events("lease_fence")]
            assert fences == [wedged], fences
