"""Join: a fourth node takes only the slots the ring now gives it (about a quarter), live,
while a client keeps calling: no failed call, every message delivered once."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import slot_of
from testkit import (
    LoadClient,
    MeshSettings,
    OwnershipMonitor,
    assert_exactly_once,
    assert_never_two_live,
    chaos_sizes,
    plan_sessions,
    ring_placement,
    running_process_mesh,
    start_sessions,
    wait_all_delivered,
    wait_all_ready,
    wait_owners_follow_ring,
)


@pytest.mark.slow
class TestFourthNodeJoinsUnderLoad:
    """Three nodes carry sessions and traffic; node-4 starts."""

    @pytest.mark.timeout(180)
    async def test_only_slots_the_ring_gives_the_new_node_move(self, tmp_path: Path) -> None:
        size = chaos_sizes()
        sessions = plan_sessions(
            workspace_count=size.workspace_count, session_count=size.session_count
        )
        workspace_slots = sorted({slot_of(ws) for ws, _ in sessions})
        async with running_process_mesh(
            tmp_path / "mesh", MeshSettings(node_count=size.node_count)
        ) as mesh:
            await start_sessions(mesh, sessions)

            async with (
                OwnershipMonitor(mesh) as monitor,
                LoadClient(mesh.gateway_address, sessions, worker_count=size.load_workers) as load,
            ):
                # Every slot held now (all of them, or only the sessions' ones) sits where
                # the three-node ring puts it, so "should move" is well defined.
                held = sorted(set((await monitor.sample()).owners) | set(workspace_slots))
                await wait_owners_follow_ring(mesh, monitor, held, timeout_seconds=30)
                before = dict((await monitor.sample()).owners)
                await load.wait_for_acks(size.session_count // 2)

                await mesh.start_node("node-4")
                ring_after = await ring_placement(mesh, held)
                await wait_owners_follow_ring(mesh, monitor, held, timeout_seconds=30)
                placed = await wait_all_ready(mesh.gateway_address, sessions, timeout_seconds=30)
                await load.wait_for_acks(size.session_count // 2)
            report = load.report

            after = monitor.latest().owners
            should_move = {slot for slot in held if ring_after[slot] != before[slot][0]}
            moved = {slot for slot in held if after[slot][0] != before[slot][0]}
            assert should_move, "the ring gave node-4 none of the held slots: test proves nothing"
            assert moved == should_move
            assert {after[slot][0] for slot in moved} == {"node-4"}
            share = len(moved) / len(held)
            assert 0.1 <= share <= 0.45, f"{len(moved)}/{len(held)} slots moved, not about 1/4"
            # A slot that stays never changed hands, not even for a moment (same epoch).
            history = monitor.owner_changes()
            churned = {slot: history[slot] for slot in held if slot not in moved
                       if len(history[slot]) != 1}  # fmt: skip
            assert not churned, f"slots that should stay changed owner: {churned}"
            assert not monitor.violations, monitor.violations[:10]
            assert "node-4" in set(placed.values())

            assert not report.failures, report.failure_summary()
            stats = await wait_all_delivered(mesh, report)
            assert_exactly_once(stats, report)
            assert_never_two_live(stats, sessions)
            print(
                f"join: {len(moved)}/{len(held)} slots moved; {report.calls} calls, "
                f"max latency {report.max_latency_seconds:.2f}s, simnet resends {stats['resends']}"
            )
