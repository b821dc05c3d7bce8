"""The benchmark harness: ``python -m bench.run [--smoke] [--out bench/results.json]``.

Runs the scenarios, writes one JSON document (``summary`` holds the headline figures under
fixed key names, a contract with the README and issue 4) and prints a table. Every speed
figure is a ratio to a baseline measured in the same run, because absolute numbers move from
machine to machine. Scenarios not built yet report ``null`` with a ``pending`` note.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.scenarios_ring import FULL_RING_SIZES, SMOKE_RING_SIZES, run_ring_scenario
from bench.scenarios_unary import FULL_UNARY_SIZES, SMOKE_UNARY_SIZES, run_unary_scenario

SUMMARY_KEYS = (
    "gateway_vs_direct_throughput",
    "client_vs_direct_throughput",
    "gateway_added_p50_ms",
    "create_qr_p95_ms",
    "send_p95_ms",
    "mixed_median_ms",
    "movement_worst_ratio_to_ideal",
    "balance_max_over_mean_8_nodes",
    "memory_per_session_kb",
    "failover_seconds_1000_sessions",
)
"""The names of ``summary``: a contract, in the order of issue 4."""

TARGETS = {
    "gateway_vs_direct_throughput": ">= 0.5",
    "client_vs_direct_throughput": ">= 0.9",
    "gateway_added_p50_ms": "<= 0.5",
    "create_qr_p95_ms": "<= 200",
    "send_p95_ms": "<= 100",
    "mixed_median_ms": "<= 10",
    "movement_worst_ratio_to_ideal": "<= 1.2",
    "balance_max_over_mean_8_nodes": "<= 1.15",
    "memory_per_session_kb": "< 50",
    "failover_seconds_1000_sessions": "(reported)",
}
"""Issue 4's target per summary key, shown next to the measured figure."""

PENDING_SCENARIOS = {
    "load_checklist": (
        ("create_qr_p95_ms", "send_p95_ms", "mixed_median_ms"),
        "pending: 1,000 concurrent creates/sends and the mixed run are not built yet",
    ),
    "scale_8_nodes": (
        ("memory_per_session_kb",),
        "pending: 10,000 sessions over 8 nodes is not built yet",
    ),
    "failover": (
        ("failover_seconds_1000_sessions",),
        "pending: the kill -9 → READY timing for 1,000 sessions is not built yet",
    ),
}
"""Scenarios without code yet: name → (summary keys left null, why)."""


def _machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run_benchmark(*, is_smoke: bool) -> dict[str, Any]:
    """Run every built scenario at smoke or full size; the results document."""
    scenarios: dict[str, Any] = {}
    summary: dict[str, float | None] = dict.fromkeys(SUMMARY_KEYS)

    started = time.monotonic()
    ring = await asyncio.to_thread(
        run_ring_scenario, SMOKE_RING_SIZES if is_smoke else FULL_RING_SIZES
    )
    ring["seconds"] = time.monotonic() - started
    scenarios["ring_movement"] = ring
    summary["movement_worst_ratio_to_ideal"] = ring["movement_worst_ratio_to_ideal"]
    summary["balance_max_over_mean_8_nodes"] = ring["balance_max_over_mean_8_nodes"]

    started = time.monotonic()
    unary = await run_unary_scenario(SMOKE_UNARY_SIZES if is_smoke else FULL_UNARY_SIZES)
    unary["seconds"] = time.monotonic() - started
    scenarios["unary_get_session"] = unary
    summary["gateway_vs_direct_throughput"] = unary["gateway_vs_direct_throughput"]
    summary["gateway_added_p50_ms"] = unary["gateway_added_p50_ms"]
    summary["client_vs_direct_throughput"] = unary["client_vs_direct_throughput"]

    for name, (keys, note) in PENDING_SCENARIOS.items():
        scenarios[name] = {"status": "pending", "note": note, "summary_keys": list(keys)}

    return {
        "summary": summary,
        "scenarios": scenarios,
        "machine": _machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if is_smoke else "full",
        "load_generator": unary["load_generator"],
    }


def _pending_note(key: str) -> str:
    for keys, note in PENDING_SCENARIOS.values():
        if key in keys:
            return note
    return "not measured"


def print_table(results: dict[str, Any], console: Console) -> None:
    """The summary as a table: figure, target, and where the figure is pending."""
    table = Table(
        title=f"sessionmesh bench ({results['mode']}, {results['date']}, "
        f"{results['machine']['cpu_count']} CPUs, load generator: {results['load_generator']})"
    )
    table.add_column("summary key")
    table.add_column("measured", justify="right")
    table.add_column("target")
    table.add_column("note")
    for key in SUMMARY_KEYS:
        value = results["summary"][key]
        if value is None:
            table.add_row(
                key, "pending", TARGETS[key], _pending_note(key).removeprefix("pending: ")
            )
        else:
            table.add_row(key, f"{value:.3f}", TARGETS[key], "")
    console.print(table)
    unary = results["scenarios"]["unary_get_session"]
    direct, gateway = unary["direct"], unary["gateway"]
    console.print(
        f"GetSession via {unary['load_generator']}: direct to owner (baseline) "
        f"{direct['throughput_per_second']:.0f}/s, p50 {direct['p50_ms']:.3f} ms; gateway: "
        f"{gateway['throughput_per_second']:.0f}/s, p50 {gateway['p50_ms']:.3f} ms"
    )
    client_direct, client = unary["client_direct"], unary["client"]
    console.print(
        f"GetSession via {unary['client_load_generator']}: direct stub (baseline) "
        f"{client_direct['throughput_per_second']:.0f}/s; proxyless client: "
        f"{client['throughput_per_second']:.0f}/s"
    )
    if "gateway_traced_vs_untraced_throughput" in unary:
        console.print(
            f"Tracing cost: gateway throughput traced/untraced "
            f"{unary['gateway_traced_vs_untraced_throughput']:.3f}"
        )
    ring = results["scenarios"]["ring_movement"]
    console.print(
        f"Ring movement over {ring['workspace_count']} workspaces: worst ring/ideal "
        f"{ring['movement_worst_ratio_to_ideal']:.3f}, "
        f"worst modulo/ideal {ring['modulo_worst_ratio_to_ideal']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, write the JSON, print the table; the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small sizes, under 30 s")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    arguments = parser.parse_args(argv)
    results = asyncio.run(run_benchmark(is_smoke=arguments.smoke))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    # Wide enough for the key names even when stdout is a pipe (rich assumes 80 columns then).
    print_table(results, Console(width=120))
    print(f"wrote {arguments.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
