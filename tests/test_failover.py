"""Failover: kill -9 a node under load; its sessions come back READY on the survivors within
TTL + 3 s, without a QR, every acknowledged message delivered once, never two connections."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from testkit import (
    LoadClient,
    MeshSettings,
    OwnershipMonitor,
    account_of,
    assert_exactly_once,
    assert_never_two_live,
    chaos_sizes,
    plan_sessions,
    running_process_mesh,
    start_sessions,
    wait_all_delivered,
    wait_all_ready,
)

LEASE_TTL_SECONDS = 2
FAILOVER_BUDGET_SECONDS = LEASE_TTL_SECONDS + 3


@pytest.mark.slow
class TestKillOneOfThree:
    """SIGKILL the busiest of three nodes while a client sends messages with unique ids."""

    @pytest.mark.timeout(180)
    async def test_survivors_take_over_within_ttl_plus_three_seconds(self, tmp_path: Path) -> None:
        size = chaos_sizes()
        settings = MeshSettings(node_count=size.node_count, lease_ttl_seconds=LEASE_TTL_SECONDS)
        sessions = plan_sessions(
            workspace_count=size.workspace_count, session_count=size.session_count
        )
        async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
            placed = await start_sessions(mesh, sessions)
            per_node = Counter(placed.values())
            assert set(per_node) == set(mesh.running_nodes), per_node
            victim = per_node.most_common(1)[0][0]
            victims_sessions = [key for key, node_id in placed.items() if node_id == victim]
            before = await mesh.simnet_stats(include_ids=False)
            qr_before = {
                account_of(key): before["accounts"][account_of(key)]["qr_issued"]
                for key in victims_sessions
            }

            async with (
                OwnershipMonitor(mesh) as monitor,
                LoadClient(mesh.gateway_address, sessions, worker_count=size.load_workers) as load,
            ):
                await load.wait_for_acks(size.session_count // 2)
                victim_slots = {
                    slot for slot, (owner, _) in monitor.latest().owners.items() if owner == victim
                }
                assert victim_slots, f"{victim} hosts sessions but holds no owners/ key"

                await mesh.kill_node(victim)
                killed_at = time.monotonic()
                moved = await wait_all_ready(
                    mesh.gateway_address,
                    sessions,
                    timeout_seconds=FAILOVER_BUDGET_SECONDS + 15,
                    not_on=victim,
                )
                failover_seconds = time.monotonic() - killed_at
                print(f"failover: {failover_seconds:.2f}s for {len(victims_sessions)} sessions")
                # Traffic keeps flowing after the failover.
                await load.wait_for_acks(size.session_count // 2)
            report = load.report

            assert failover_seconds <= FAILOVER_BUDGET_SECONDS, (
                f"failover took {failover_seconds:.2f}s > TTL {LEASE_TTL_SECONDS}s + 3s"
            )
            assert set(moved.values()) <= set(mesh.running_nodes)
            assert not monitor.violations, monitor.violations[:10]
            now_owned = (await monitor.sample()).owners
            assert not {s for s, (owner, _) in now_owned.items() if owner == victim}
            assert victim_slots <= set(now_owned), "some of the dead node's slots stay orphaned"

            stats = await wait_all_delivered(mesh, report)
            assert_exactly_once(stats, report)
            assert_never_two_live(stats, sessions)
            qr_after = {account: stats["accounts"][account]["qr_issued"] for account in qr_before}
            assert qr_after == qr_before, "a session of the killed node showed a new QR code"
            print(
                f"load: {report.calls} calls, {report.acked_count} acked, "
                f"{len(report.failures)} failed ({report.failure_summary()}), "
                f"max latency {report.max_latency_seconds:.2f}s, simnet resends {stats['resends']}"
            )
