"""Scenario 2: the checklist's own load at full size, through the gateway, on 8 nodes with
default settings (``sessionmesh-node`` with only the flags a deployment must give: lease TTL 5 s,
500 sessions per node): 3,000 sessions over 600 workspaces created 1,000 at once (each followed
to its QR code, then polled with GetSession until READY), then 1,000 sends at once, then 1,000
mixed calls (creates, sends, reads) from 64 callers (:mod:`testkit.checklist`).

It reports what a caller saw — every failed call by status code, latencies — and what the mesh
went through: lease fences and slot moves (from the nodes' logged events, which must stay
zero), and the CPU time every mesh process (etcd, simnet, nodes, gateway; not this process,
the load generator) spent per create and per send (from ``/proc``). Before the bursts, a few
sessions are created and sent to one call at a time: the baseline the bursts are compared with.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import SAMPLES_KEY, latency_sample, median_ms, percentile_ms, ratio
from bench.tracing_settings import TRACED_ENVIRONMENT
from testkit import (
    ASYNCIO_GENERATOR,
    ChecklistSizes,
    MeshSettings,
    one_at_a_time,
    run_checklist,
    running_process_mesh,
)

UNSTABLE_EVENTS = (
    "lease_fence",
    "lease_lost",
    "lease_given_up",
    "loop_stalled",
    "slots_fenced",
    "slot_handed_off",
    "stale_slot_released",
    "session_fenced",
)
"""Node events a stable run never logs (a fence, a lost lease, a slot that moved)."""
CHECKLIST_TARGETS_MS = {
    "create_qr_p95_ms": 10_000.0,
    "send_p95_ms": 2_000.0,
    "mixed_median_ms": 1_000.0,
}
"""The checklist's own targets: QR p95 < 10 s, send p95 < 2 s, API median < 1 s."""


@dataclass(frozen=True)
class SeedSizes:
    """How big scenario 2 runs."""

    node_count: int
    checklist: ChecklistSizes
    baseline_count: int
    """Sessions created and sent to one call at a time before the bursts."""


FULL_SEED_SIZES = SeedSizes(
    node_count=8,
    checklist=ChecklistSizes(
        session_count=3_000, workspace_count=600, wave_size=1_000, send_count=1_000,
        mixed_count=1_000,
    ),
    baseline_count=20,
)  # fmt: skip
SMOKE_SEED_SIZES = SeedSizes(
    node_count=2,
    checklist=ChecklistSizes(
        session_count=60, workspace_count=12, wave_size=30, send_count=30, mixed_count=30,
        mixed_workers=8,
    ),
    baseline_count=5,
)  # fmt: skip


def _cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 3) for name in after}


async def run_seed_scenario(sizes: SeedSizes) -> dict[str, Any]:
    """The checklist load at ``sizes``; what callers saw and what the mesh went through."""
    settings = MeshSettings(
        node_count=sizes.node_count,
        lease_ttl_seconds=None,  # the node's default (5 s)
        max_sessions=None,  # the node's default (500)
        cluster="seed",
        environment=TRACED_ENVIRONMENT,
    )
    load = sizes.checklist
    cpu: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="sessionmesh-bench-seed-") as state_dir:
        async with running_process_mesh(Path(state_dir), settings) as mesh:
            alone = await one_at_a_time(mesh.gateway_address, count=sizes.baseline_count)
            cpu["start"] = mesh.cpu_seconds()

            async def on_phase(name: str) -> None:
                cpu[name] = mesh.cpu_seconds()

            report = await run_checklist(mesh.gateway_address, load, on_phase=on_phase)
            events = {event: len(mesh.events(event)) for event in UNSTABLE_EVENTS}
            acquired = [event["slot"] for event in mesh.events("slot_acquired")]
            simnet = await mesh.simnet_stats(include_ids=False)
            await mesh.kill_all_nodes()  # measured: no need to drain 3,000 sessions node by node
    create_cpu = _cpu_between(cpu["start"], cpu["creates"])
    send_cpu = _cpu_between(cpu["creates"], cpu["sends"])
    send_alone = alone.send_burst_seconds
    qr_alone = alone.create_to_qr_seconds
    create_qr_p95 = percentile_ms(report.create_to_qr_seconds, 0.95)
    send_p95 = percentile_ms(report.send_burst_seconds, 0.95)
    mixed_median = median_ms(report.mixed_seconds)
    return {
        "load_generator": ASYNCIO_GENERATOR,
        "tracing": dict(TRACED_ENVIRONMENT),
        "node_count": sizes.node_count,
        "node_settings": "defaults (lease TTL 5 s, 500 sessions per node)",
        "sessions": load.session_count,
        "workspaces": load.workspace_count,
        "creates_at_once": load.wave_size,
        "sends_at_once": load.send_count,
        "mixed_calls": load.mixed_count,
        "mixed_workers": load.mixed_workers,
        "failed_calls": report.failed_calls,
        "failures": report.failures(),
        "not_ready": report.not_ready,
        "unstable_events": events,
        "lease_fences": events["lease_fence"],
        "slot_moves": len(acquired) - len(set(acquired)) + events["slot_handed_off"],
        "simnet": {key: simnet.get(key) for key in ("replaced", "max_concurrent_live")},
        "phase_seconds": {name: round(value, 3) for name, value in report.phase_seconds.items()},
        "create_qr": _percentiles(report.create_to_qr_seconds),
        "create_ready": _percentiles(report.create_to_ready_seconds),
        "send": _percentiles(report.send_burst_seconds),
        "mixed": {**_percentiles(report.mixed_seconds), "median_ms": mixed_median},
        "create_qr_p95_ms": create_qr_p95,
        "send_p95_ms": send_p95,
        "mixed_median_ms": mixed_median,
        "one_at_a_time": {
            "calls": len(send_alone),
            "create_qr_p50_ms": percentile_ms(qr_alone, 0.50),
            "send_p50_ms": percentile_ms(send_alone, 0.50),
        },
        "send_alone_p50_ms": percentile_ms(send_alone, 0.50),
        "vs_one_at_a_time": {
            "create_qr_p95_ms": ratio(create_qr_p95, percentile_ms(qr_alone, 0.50)),
            "send_p95_ms": ratio(send_p95, percentile_ms(send_alone, 0.50)),
            "mixed_median_ms": ratio(mixed_median, percentile_ms(send_alone, 0.50)),
        },
        "cpu_seconds": {"creates": create_cpu, "sends": send_cpu},
        "cpu_ms_per_create": 1000 * sum(create_cpu.values()) / load.session_count,
        "cpu_ms_per_send": 1000 * sum(send_cpu.values()) / load.send_count,
        "checklist_targets_ms": dict(CHECKLIST_TARGETS_MS),
        # Every call's latency, bounded, for the figures (bench.run keeps it out of the JSON).
        SAMPLES_KEY: {
            "create_qr": latency_sample(report.create_to_qr_seconds),
            "create_ready": latency_sample(report.create_to_ready_seconds),
            "send": latency_sample(report.send_burst_seconds),
            "mixed": latency_sample(report.mixed_seconds),
            "create_qr_one_at_a_time": latency_sample(qr_alone),
            "send_one_at_a_time": latency_sample(send_alone),
        },
    }


def _percentiles(latencies_seconds: list[float]) -> dict[str, Any]:
    return {
        "count": len(latencies_seconds),
        "p50_ms": percentile_ms(latencies_seconds, 0.50),
        "p95_ms": percentile_ms(latencies_seconds, 0.95),
        "p99_ms": percentile_ms(latencies_seconds, 0.99),
    }
