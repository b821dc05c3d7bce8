"""The benchmark harness: ``python -m bench.run [--smoke] [--only NAME] [--out PATH]
[--figures DIR]``.

Runs the scenarios, writes one JSON document (``summary`` holds the headline figures under
fixed key names, a contract with the README and issue 4), prints a table and draws the figures
as PNG files (``bench.figures``: latency distributions, the failover timeline). Every speed
figure is a ratio to a baseline measured in the same run, because absolute numbers move from
machine to machine. A scenario that fails leaves its keys ``null``, records its error, and
makes the exit code non-zero.
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.figures import Samples, draw_figures
from bench.scenarios_failover import (
    FULL_FAILOVER_SIZES,
    SMOKE_FAILOVER_SIZES,
    run_failover_scenario,
)
from bench.scenarios_ring import FULL_RING_SIZES, SMOKE_RING_SIZES, run_ring_scenario
from bench.scenarios_scale import FULL_SCALE_SIZES, SMOKE_SCALE_SIZES, run_scale_scenario
from bench.scenarios_seed import FULL_SEED_SIZES, SMOKE_SEED_SIZES, run_seed_scenario
from bench.scenarios_unary import FULL_UNARY_SIZES, SMOKE_UNARY_SIZES, run_unary_scenario
from bench.scenarios_webhooks import (
    FULL_WEBHOOK_SIZES,
    SMOKE_WEBHOOK_SIZES,
    run_webhook_scenario,
)
from bench.stats import SAMPLES_KEY, LatencySample

SUMMARY_KEYS = (
    "gateway_vs_direct_throughput",
    "client_vs_direct_throughput",
    "gateway_added_p50_ms",
    "gateway_vs_nginx_throughput",
    "seed_load_failed_calls",
    "seed_load_lease_fences",
    "create_qr_p95_ms",
    "send_p95_ms",
    "mixed_median_ms",
    "send_alone_p50_ms",
    "cpu_ms_per_send",
    "cpu_ms_per_create",
    "movement_worst_ratio_to_ideal",
    "balance_max_over_mean_8_nodes",
    "memory_per_session_kb",
    "failover_seconds_1000_sessions",
    "webhook_events_per_second",
    "webhook_p99_ms",
)
"""The names of ``summary``: a contract (issues 4, 9 and 12)."""

TARGETS = {
    "gateway_vs_direct_throughput": ">= 0.5",
    "client_vs_direct_throughput": ">= 0.9",
    "gateway_added_p50_ms": "<= 0.5",
    "gateway_vs_nginx_throughput": ">= 1.0",
    "seed_load_failed_calls": "= 0",
    "seed_load_lease_fences": "= 0",
    "create_qr_p95_ms": "<= 1000",
    "send_p95_ms": "<= 500",
    "mixed_median_ms": "<= 20",
    "send_alone_p50_ms": "<= 3",
    "cpu_ms_per_send": "<= 2",
    "cpu_ms_per_create": "<= 4",
    "movement_worst_ratio_to_ideal": "<= 1.2",
    "balance_max_over_mean_8_nodes": "<= 1.15",
    "memory_per_session_kb": "< 50",
    "failover_seconds_1000_sessions": "<= 3",
    "webhook_events_per_second": ">= 500",
    "webhook_p99_ms": "<= 200",
}
"""The target per summary key (issues 4 and 9), shown next to the measured figure."""
DEFAULT_OUT = Path("bench/results.json")


@dataclass(frozen=True)
class Scenario:
    """One scenario of the harness: how to run it and which summary keys it fills."""

    name: str
    run: Callable[[bool], Awaitable[dict[str, Any]]]
    """Runs it at smoke (True) or full size; its results."""
    summary_keys: dict[str, str]
    """Summary key → the key of the scenario's results that holds the figure."""


SCENARIOS = (
    Scenario(
        "ring_movement",
        lambda is_smoke: asyncio.to_thread(
            run_ring_scenario, SMOKE_RING_SIZES if is_smoke else FULL_RING_SIZES
        ),
        {
            "movement_worst_ratio_to_ideal": "movement_worst_ratio_to_ideal",
            "balance_max_over_mean_8_nodes": "balance_max_over_mean_8_nodes",
        },
    ),
    Scenario(
        "unary_get_session",
        lambda is_smoke: run_unary_scenario(SMOKE_UNARY_SIZES if is_smoke else FULL_UNARY_SIZES),
        {
            "gateway_vs_direct_throughput": "gateway_vs_direct_throughput",
            "gateway_added_p50_ms": "gateway_added_p50_ms",
            "client_vs_direct_throughput": "client_vs_direct_throughput",
            "gateway_vs_nginx_throughput": "gateway_vs_nginx_throughput",
        },
    ),
    Scenario(
        "seed_load",
        lambda is_smoke: run_seed_scenario(SMOKE_SEED_SIZES if is_smoke else FULL_SEED_SIZES),
        {
            "seed_load_failed_calls": "failed_calls",
            "seed_load_lease_fences": "lease_fences",
            "create_qr_p95_ms": "create_qr_p95_ms",
            "send_p95_ms": "send_p95_ms",
            "mixed_median_ms": "mixed_median_ms",
            "send_alone_p50_ms": "send_alone_p50_ms",
            "cpu_ms_per_send": "cpu_ms_per_send",
            "cpu_ms_per_create": "cpu_ms_per_create",
        },
    ),
    Scenario(
        "scale_8_nodes",
        lambda is_smoke: run_scale_scenario(SMOKE_SCALE_SIZES if is_smoke else FULL_SCALE_SIZES),
        {"memory_per_session_kb": "memory_per_session_kb"},
    ),
    Scenario(
        "failover",
        lambda is_smoke: run_failover_scenario(
            SMOKE_FAILOVER_SIZES if is_smoke else FULL_FAILOVER_SIZES
        ),
        {"failover_seconds_1000_sessions": "failover_seconds"},
    ),
    Scenario(
        "webhooks",
        lambda is_smoke: run_webhook_scenario(
            SMOKE_WEBHOOK_SIZES if is_smoke else FULL_WEBHOOK_SIZES
        ),
        {
            "webhook_events_per_second": "webhook_events_per_second",
            "webhook_p99_ms": "webhook_p99_ms",
        },
    ),
)
"""Every scenario, in the order they run."""


def _machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run_benchmark(
    *,
    is_smoke: bool,
    only: Sequence[str] = (),
    progress: Callable[[str], None] = print,
    samples: dict[str, dict[str, LatencySample]] | None = None,
) -> dict[str, Any]:
    """Run the scenarios (all, or those named in ``only``) at smoke or full size; the results
    document. A scenario that fails is recorded with its error and leaves its keys null.
    The latency samples scenarios pass out (for the figures) go to ``samples`` by scenario
    name, never into the document."""
    scenarios: dict[str, Any] = {}
    summary: dict[str, float | None] = dict.fromkeys(SUMMARY_KEYS)
    chosen = [scenario for scenario in SCENARIOS if not only or scenario.name in only]
    for number, scenario in enumerate(chosen, start=1):
        progress(f"[{number}/{len(chosen)}] {scenario.name} …")
        started = time.monotonic()
        try:
            result = await scenario.run(is_smoke)
        except Exception as error:
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            progress(f"[{number}/{len(chosen)}] {scenario.name} FAILED: {result['error']}")
        else:
            taken = result.pop(SAMPLES_KEY, None)
            if samples is not None and taken:
                samples[scenario.name] = taken
            result["status"] = "ok"
            for summary_key, result_key in scenario.summary_keys.items():
                summary[summary_key] = result.get(result_key)
        result["seconds"] = round(time.monotonic() - started, 1)
        scenarios[scenario.name] = result
        progress(f"[{number}/{len(chosen)}] {scenario.name} done in {result['seconds']} s")
    unary = scenarios.get("unary_get_session", {})
    return {
        "summary": summary,
        "scenarios": scenarios,
        "machine": _machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if is_smoke else "full",
        "load_generator": unary.get("load_generator", "-"),
    }


def _missing_note(results: dict[str, Any], key: str) -> str:
    for scenario in SCENARIOS:
        if key in scenario.summary_keys:
            found = results["scenarios"].get(scenario.name)
            if found is None:
                return f"{scenario.name} not run"
            if found.get("status") == "failed":
                return f"{scenario.name} failed: {found['error']}"[:80]
    return "not measured"


def _ok(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = results["scenarios"].get(name)
    return found if found is not None and found.get("status") == "ok" else None


def _details(results: dict[str, Any]) -> list[str]:
    """One line per finished scenario: its baseline next to what was measured."""
    lines = []
    if unary := _ok(results, "unary_get_session"):
        direct, gateway = unary["direct"], unary["gateway"]
        lines.append(
            f"GetSession via {unary['load_generator']}: direct to owner (baseline) "
            f"{direct['throughput_per_second']:.0f}/s, p50 {direct['p50_ms']:.3f} ms; gateway "
            f"{gateway['throughput_per_second']:.0f}/s, p50 {gateway['p50_ms']:.3f} ms"
        )
        if unary.get("bare_proxy_added_p50_ms") is not None:
            lines.append(
                "Floor of a Python hop, a bare grpc.aio forwarder (bench/bare_proxy.py): "
                f"+{unary['bare_proxy_added_p50_ms']:.3f} ms p50, throughput "
                f"{unary['bare_proxy_vs_direct_throughput']:.3f} x direct"
            )
        client_direct, client = unary["client_direct"], unary["client"]
        lines.append(
            f"GetSession via {unary['client_load_generator']}: direct stub (baseline) "
            f"{client_direct['throughput_per_second']:.0f}/s; proxyless client "
            f"{client['throughput_per_second']:.0f}/s"
        )
        if unary.get("gateway_traced_vs_untraced_throughput") is not None:
            lines.append(
                "Tracing on (parent-based ratio sampler) vs SDK disabled, gateway throughput: "
                f"{unary['gateway_traced_vs_untraced_throughput']:.3f}"
            )
    if unary and unary.get("gateway_vs_nginx_throughput") is not None:
        nginx = unary["gateway"]["nginx"]
        lines.append(
            f"Debian's nginx (grpc_pass, 1 worker) in front of the same owner: "
            f"{nginx['throughput_per_second']:.0f}/s, p50 {nginx['p50_ms']:.3f} ms; gateway / "
            f"nginx {unary['gateway_vs_nginx_throughput']:.3f}"
        )
    if seed := _ok(results, "seed_load"):
        lines.append(
            f"Checklist load ({seed['sessions']} sessions on {seed['node_count']} nodes, "
            f"{seed['creates_at_once']} creates at once): failed calls {seed['failed_calls']}, "
            f"lease fences {seed['lease_fences']}, slot moves {seed['slot_moves']}; QR p95 "
            f"{seed['create_qr_p95_ms']:.0f} ms, send p95 {seed['send_p95_ms']:.0f} ms, mixed "
            f"median {seed['mixed_median_ms']:.1f} ms"
        )
        single = seed["one_at_a_time"]
        lines.append(
            f"  baseline, one call at a time: QR p50 {single['create_qr_p50_ms']:.1f} ms, "
            f"send p50 {single['send_p50_ms']:.1f} ms; mesh CPU per create "
            f"{seed['cpu_ms_per_create']:.2f} ms, per send {seed['cpu_ms_per_send']:.2f} ms"
        )
    if scale := _ok(results, "scale_8_nodes"):
        lines.append(
            f"Scale: {scale['sessions']} sessions on {scale['node_count']} nodes created in "
            f"{scale['create_all_seconds']:.1f} s, {scale['memory_per_session_kb']:.1f} KB each"
        )
    if failover := _ok(results, "failover"):
        lines.append(
            f"Failover: {failover['sessions']} sessions, kill -9 of {failover['killed_node']} "
            f"({failover['sessions_on_killed_node']} sessions) to all READY in "
            f"{failover['failover_seconds']:.2f} s (lease TTL {failover['lease_ttl_seconds']} s); "
            f"new QR codes {failover['new_qr_codes']}"
        )
    if hooks := _ok(results, "webhooks"):
        lines.append(
            f"Webhooks ({hooks['sessions']} sessions on {hooks['node_count']} nodes, to a "
            f"local receiver): {hooks['webhook_events_per_second']:.0f} events/s; at "
            f"{hooks['paced_events_per_second']:.0f}/s p50 {hooks['webhook_p50_ms']:.1f} ms, "
            f"p99 {hooks['webhook_p99_ms']:.1f} ms; baseline, the receiver fed by httpx alone "
            f"{hooks['receiver_alone_events_per_second']:.0f}/s "
            f"(mesh/alone {hooks['webhook_vs_receiver_alone']:.2f}); unverified signatures "
            f"{hooks['unverified_requests']}"
        )
    if ring := _ok(results, "ring_movement"):
        lines.append(
            f"Ring movement over {ring['workspace_count']} workspaces: worst ring/ideal "
            f"{ring['movement_worst_ratio_to_ideal']:.3f}, "
            f"worst modulo/ideal {ring['modulo_worst_ratio_to_ideal']:.3f}"
        )
    return lines


def print_table(results: dict[str, Any], console: Console) -> None:
    """The summary as a table (figure, target, why a figure is missing), then details."""
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
            table.add_row(key, "-", TARGETS[key], _missing_note(results, key))
        else:
            table.add_row(key, f"{value:.3f}", TARGETS[key], "")
    console.print(table)
    for line in _details(results):
        console.print(line, markup=False, highlight=False)


def figures_dir_for(out: Path) -> Path:
    """Where the figures of a run writing ``out`` go by default: ``figures/`` next to a
    ``results.json`` (``make bench``: ``bench/figures/``), else ``NAME-figures/`` next to
    ``NAME.json`` (``make bench-smoke``: ``.mesh/bench-smoke-figures/``)."""
    if out.stem == DEFAULT_OUT.stem:
        return out.parent / "figures"
    return out.parent / f"{out.stem}-figures"


def write_figures(
    results: dict[str, Any], samples: Samples, out_dir: Path, console: Console
) -> bool:
    """Draw the figures into ``out_dir``; False (the error printed) when drawing failed."""
    try:
        written = draw_figures(results, samples, out_dir, targets=TARGETS)
    except Exception as error:
        console.print(f"figures FAILED: {type(error).__name__}: {error}", markup=False)
        return False
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, write the JSON, print the table, draw the figures; non-zero if a
    scenario failed or the figures could not be drawn."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small sizes, under 30 s")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--figures",
        type=Path,
        default=None,
        help="directory for the PNG figures (default: figures/ next to a results.json, "
        "else NAME-figures/ next to the --out file NAME.json)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=[scenario.name for scenario in SCENARIOS],
        help="run only this scenario (repeatable)",
    )
    arguments = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    samples: dict[str, dict[str, LatencySample]] = {}
    results = asyncio.run(
        run_benchmark(
            is_smoke=arguments.smoke, only=arguments.only, progress=progress, samples=samples
        )
    )
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    # Wide enough for the key names even when stdout is a pipe (rich assumes 80 columns then).
    console = Console(width=120)
    print_table(results, console)
    print(f"wrote {arguments.out}", file=sys.stderr)
    figures_ok = write_figures(
        results, samples, arguments.figures or figures_dir_for(arguments.out), console
    )
    failed = [name for name, found in results["scenarios"].items() if found["status"] != "ok"]
    return 1 if failed or not figures_ok else 0


if __name__ == "__main__":
    sys.exit(main())
