"""SIGTERM during handoffs: the node exits within its grace (``--shutdown-grace-seconds``),
handoffs still running at the deadline are cut short, and nothing is lost: every session
READY elsewhere, every acknowledged message delivered once, never two live connections."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from testkit import (
    LoadClient,
    MeshSettings,
    assert_exactly_once,
    assert_never_two_live,
    eventually,
    plan_sessions,
    running_process_mesh,
    start_sessions,
    wait_all_delivered,
    wait_all_ready,
)

GRACE_SECONDS = 3
EXIT_MARGIN_SECONDS = 2.5
"""Beyond the grace: the interpreter's own exit (threads joined, modules torn down)."""


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigterm_during_handoffs_exits_within_the_grace_and_loses_nothing(
    tmp_path: Path,
) -> None:
    # One move at a time: handing off node-1's slots takes longer than the grace allows.
    settings = MeshSettings(
        node_count=2,
        extra_node_flags=(
            "--max-moves-in-flight", "1",
            "--shutdown-grace-seconds", str(GRACE_SECONDS),
        ),
    )  # fmt: skip
    sessions = plan_sessions(workspace_count=600, session_count=600)
    async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
        await start_sessions(mesh, sessions)
        async with LoadClient(mesh.gateway_address, sessions, worker_count=8) as load:
            await load.wait_for_acks(50)
            await mesh.start_node("node-3")  # node-1 and node-2 begin handing slots over
            await eventually(
                lambda: bool(mesh.events("slot_handed_off", prefix="node-1")),
                timeout_seconds=30,
                message="node-1 handing off",
            )
            started = time.monotonic()
            code = await mesh.stop_node("node-1")
            elapsed = time.monotonic() - started
            placed = await wait_all_ready(
                mesh.gateway_address, sessions, timeout_seconds=60, not_on="node-1"
            )
            await load.wait_for_acks(50)
        report = load.report
        stats = await wait_all_delivered(mesh, report)

        cut = mesh.events("drain_incomplete", prefix="node-1")
        print(
            f"SIGTERM during handoffs: exited in {elapsed:.1f}s (grace {GRACE_SECONDS}s), "
            f"{cut[0].get('owned') if cut else 0} slots left at the deadline; "
            f"{report.calls} calls, max latency {report.max_latency_seconds:.2f}s"
        )
        assert code == 0, mesh.log_tail("node-1")
        assert elapsed <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, (
            f"node-1 took {elapsed:.1f}s to exit with a {GRACE_SECONDS}s grace"
        )
        # The grace was really what ended the drain (else this proves nothing).
        assert cut, "node-1 finished every handoff within the grace: the test proves nothing"
        assert set(placed.values()) <= {"node-2", "node-3"}
        assert not report.failures, report.failure_summary()
        assert_exactly_once(stats, report)
        assert_never_two_live(stats, sessions)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigterm_with_hung_storage_still_exits_and_its_sessions_fail_over(
    tmp_path: Path,
) -> None:
    """Every fsync of node-1's storage hangs (a hung NFS mount), then it is SIGTERM'd: it
    exits within its grace all the same — its storage threads are daemons, never joined at
    exit — and its sessions come back READY on node-2, never two live connections."""
    settings = MeshSettings(
        node_count=2,
        node_module="testkit.blockable_node",
        extra_node_flags=("--shutdown-grace-seconds", str(GRACE_SECONDS)),
    )
    sessions = plan_sessions(workspace_count=20, session_count=40)
    async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
        placed = await start_sessions(mesh, sessions)
        assert "node-1" in set(placed.values()), "no session on node-1: the test proves nothing"
        mesh.toggle_node_storage("node-1")  # every fsync of its storage waits from now on
        started = time.monotonic()
        code = await mesh.stop_node("node-1")
        elapsed = time.monotonic() - started
        after = await wait_all_ready(
            mesh.gateway_address, sessions, timeout_seconds=60, not_on="node-1"
        )
        stats = await mesh.simnet_stats()
        print(f"SIGTERM with hung storage: exited in {elapsed:.1f}s (grace {GRACE_SECONDS}s)")
        assert code == 0, mesh.log_tail("node-1")
        assert elapsed <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, (
            f"node-1 took {elapsed:.1f}s to exit with a {GRACE_SECONDS}s grace"
        )
        assert set(after.values()) == {"node-2"}
        assert_never_two_live(stats, sessions)
