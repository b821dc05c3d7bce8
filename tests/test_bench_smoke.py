"""The benchmark harness in smoke mode: it runs to the end and writes every contract key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import SCENARIOS, SUMMARY_KEYS
from bench.scenarios_load import SMOKE_LOAD_SIZES
from bench.scenarios_scale import SMOKE_SCALE_SIZES

CONTRACT_KEYS = {
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
}
"""Spelled out again here so that renaming a key in the harness fails this test."""
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, object]]:
    """One ``python -m bench.run --smoke`` run: exit code, output, and the parsed JSON."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = completed.stdout + completed.stderr
    results = json.loads(out.read_text()) if out.exists() else {}
    return completed.returncode, output, results


class TestBenchSmoke:
    """``python -m bench.run --smoke`` exits 0 and writes the results document."""

    def test_exits_zero(self, smoke_results: tuple[int, str, dict[str, object]]) -> None:
        code, output, _ = smoke_results
        assert code == 0, output

    def test_summary_holds_exactly_the_contract_keys(
        self, smoke_results: tuple[int, str, dict[str, object]]
    ) -> None:
        _, output, results = smoke_results
        summary = results.get("summary")
        assert isinstance(summary, dict), output
        assert set(summary) == CONTRACT_KEYS
        assert set(SUMMARY_KEYS) == CONTRACT_KEYS

    def test_ring_figures_are_positive_numbers(
        self, smoke_results: tuple[int, str, dict[str, object]]
    ) -> None:
        _, output, results = smoke_results
        summary = results["summary"]
        assert isinstance(summary, dict), output
        movement = summary["movement_worst_ratio_to_ideal"]
        balance = summary["balance_max_over_mean_8_nodes"]
        assert isinstance(movement, float) and movement > 0
        assert isinstance(balance, float) and balance >= 1.0

    def test_unary_figures_name_the_generator_that_ran(
        self, smoke_results: tuple[int, str, dict[str, object]]
    ) -> None:
        _, output, results = smoke_results
        summary = results["summary"]
        assert isinstance(summary, dict), output
        assert isinstance(summary["gateway_vs_direct_throughput"], float)
        assert summary["gateway_vs_direct_throughput"] > 0
        assert isinstance(summary["client_vs_direct_throughput"], float)
        assert summary["client_vs_direct_throughput"] > 0
        assert isinstance(summary["gateway_added_p50_ms"], float)
        expected = "h2load" if shutil.which("h2load") else "asyncio"
        assert expected in str(results["load_generator"])

    def test_every_scenario_ran_and_filled_its_keys(
        self, smoke_results: tuple[int, str, dict[str, object]]
    ) -> None:
        _, output, results = smoke_results
        summary = results["summary"]
        scenarios = results["scenarios"]
        assert isinstance(summary, dict) and isinstance(scenarios, dict), output
        assert {name: s["status"] for name, s in scenarios.items()} == dict.fromkeys(
            (scenario.name for scenario in SCENARIOS), "ok"
        ), output
        assert [key for key in CONTRACT_KEYS if summary[key] is None] == [], output

    def test_session_scenarios_lost_nothing(
        self, smoke_results: tuple[int, str, dict[str, object]]
    ) -> None:
        _, output, results = smoke_results
        scenarios = results["scenarios"]
        assert isinstance(scenarios, dict), output
        failover = scenarios["failover"]
        assert failover["new_qr_codes"] == 0
        assert failover["max_concurrent_live"] == 1
        assert scenarios["unary_get_session"]["client"]["errors"] == 0

    def test_load_scenario_got_a_qr_for_every_create_and_sent_everything(
        self, smoke_results: tuple[int, str, dict[str, object]]
    ) -> None:
        _, output, results = smoke_results
        scenarios = results["scenarios"]
        assert isinstance(scenarios, dict), output
        load = scenarios["load_checklist"]
        create_qr, sent = load["create_qr"], load["send"]
        assert create_qr["errors"] == 0, create_qr["error_codes"]
        assert create_qr["ok"] == SMOKE_LOAD_SIZES.create_count
        assert (
            create_qr["qr_in_snapshot"]
            + create_qr["qr_in_event"]
            + create_qr["qr_passed_before_watch"]
            == SMOKE_LOAD_SIZES.create_count
        )
        assert sent["errors"] == 0, sent["error_codes"]
        assert sent["ok"] == SMOKE_LOAD_SIZES.create_count
        assert load["mixed"]["errors"] == 0 and load["mixed"]["calls"] > 0
        assert set(load["mixed"]["per_method"]) == {"CreateSession", "SendMessage", "GetSession"}
        assert sum(load["sessions_per_node"].values()) == SMOKE_LOAD_SIZES.create_count
        # The bursts are reported next to a one-call-at-a-time baseline from the same run.
        assert load["one_at_a_time"]["calls"] == SMOKE_LOAD_SIZES.baseline_count
        assert all(ratio > 0 for ratio in load["vs_one_at_a_time"].values())
        assert load["simnet"]["replaced"] == 0

    def test_scale_scenario_placed_every_session_and_measured_memory(
        self, smoke_results: tuple[int, str, dict[str, object]]
    ) -> None:
        _, output, results = smoke_results
        scenarios = results["scenarios"]
        assert isinstance(scenarios, dict), output
        scale = scenarios["scale_8_nodes"]
        assert scale["create_errors"] == {}
        assert sum(scale["sessions_per_node"].values()) == SMOKE_SCALE_SIZES.session_count
        assert len(scale["rss_kb"]) == SMOKE_SCALE_SIZES.node_count
        assert scale["memory_per_session_kb"] > 0
        assert scale["simnet_live_accounts"] == SMOKE_SCALE_SIZES.session_count

    def test_records_mode_machine_and_date(
        self, smoke_results: tuple[int, str, dict[str, object]]
    ) -> None:
        _, output, results = smoke_results
        assert results.get("mode") == "smoke", output
        machine = results["machine"]
        assert isinstance(machine, dict)
        assert set(machine) == {"cpu_count", "python", "platform"}
        assert isinstance(results["date"], str) and results["date"].startswith("20")
