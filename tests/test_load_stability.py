"""Under its own target load the mesh stays stable: a burst of creates, polled until READY,
then bursts of sends and mixed calls, through the gateway, on nodes with default settings —
no caller sees an error, no node loses its lease, no slot moves.

Reduced in ``make test`` (4 nodes, 800 sessions, 300 creates at once); the checklist's full
size with ``SESSIONMESH_FULL=1`` (8 nodes, 3,000 sessions over 600 workspaces, 1,000 at once).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from testkit import ChecklistSizes, MeshSettings, run_checklist, running_process_mesh

IS_FULL = os.environ.get("SESSIONMESH_FULL") == "1"
NODE_COUNT = 8 if IS_FULL else 4
SIZES = (
    ChecklistSizes(
        session_count=3_000,
        workspace_count=600,
        wave_size=1_000,
        send_count=1_000,
        mixed_count=1_000,
    )
    if IS_FULL
    else ChecklistSizes(
        session_count=800, workspace_count=160, wave_size=300, send_count=300, mixed_count=300
    )
)
UNSTABLE_EVENTS = (
    "lease_fence",  # a node stopped its sessions for want of a confirmed lease
    "lease_lost",
    "lease_given_up",
    "lease_refresh_failed",
    "slots_fenced",
    "stale_slot_released",
    "slot_handed_off",
    "session_fenced",
    "loop_stalled",
)


@pytest.mark.slow
class TestChecklistLoad:
    """The checklist's load through the gateway: stable, and nothing fails."""

    @pytest.mark.timeout(600 if IS_FULL else 240)
    async def test_no_call_fails_no_lease_is_lost_no_slot_moves(self, tmp_path: Path) -> None:
        # Default node settings: no --lease-ttl-seconds (5 s), no --max-sessions (500).
        settings = MeshSettings(
            node_count=NODE_COUNT, lease_ttl_seconds=None, max_sessions=None, cluster="load"
        )
        async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
            report = await run_checklist(mesh.gateway_address, SIZES)
            unstable = {event: mesh.events(event) for event in UNSTABLE_EVENTS}
            acquired = Counter(event["slot"] for event in mesh.events("slot_acquired"))
            simnet = await mesh.simnet_stats(include_ids=False)
            await mesh.kill_all_nodes()

        assert report.failed_calls == 0, report.failures()
        assert report.not_ready == 0
        assert len(report.create_to_ready_seconds) == SIZES.session_count
        assert len(report.send_burst_seconds) == SIZES.send_count
        assert sum(len(calls.latencies_seconds) for calls in report.calls.values()) > (
            SIZES.session_count * 3 + SIZES.send_count
        )
        assert {event: len(found) for event, found in unstable.items() if found} == {}, {
            event: found[:3] for event, found in unstable.items() if found
        }
        # Every slot was acquired once, by one node, and kept: no slot moved.
        twice = {slot: count for slot, count in acquired.items() if count > 1}
        assert not twice, f"slots acquired more than once: {twice}"
        assert acquired, "no slot was acquired at all"
        assert simnet["replaced"] == 0
        assert simnet["max_concurrent_live"] == 1
