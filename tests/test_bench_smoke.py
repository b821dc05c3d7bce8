"""The benchmark harness in smoke mode (``make bench-smoke``): it runs to the end, writes every
contract key, and every figure sits inside plausible bounds.

The bounds are wide enough for a machine two or three times slower than this project's, and
narrow enough that a broken harness fails: zeros, NaN, a baseline identical to its subject, a
unit off by a thousand, a count other than what was asked for.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench import scenarios_unary
from bench.nginx import nginx_binary
from bench.run import SCENARIOS, SUMMARY_KEYS, figures_dir_for
from bench.scenarios_failover import SMOKE_FAILOVER_SIZES
from bench.scenarios_ring import BALANCE_NODE_COUNT, SMOKE_RING_SIZES
from bench.scenarios_scale import SMOKE_SCALE_SIZES
from bench.scenarios_seed import SMOKE_SEED_SIZES
from bench.scenarios_unary import SMOKE_UNARY_SIZES
from bench.scenarios_webhooks import SMOKE_WEBHOOK_SIZES
from bench.stats import SAMPLES_KEY

CONTRACT_KEYS = {
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
}
"""Spelled out again here so that renaming a key in the harness fails this test."""
COUNT_KEYS = {"seed_load_failed_calls", "seed_load_lease_fences"}
"""Summary keys that count what must not happen: zero in a good run."""
HAS_NGINX_AND_H2LOAD = nginx_binary() is not None and shutil.which("h2load") is not None
"""The gateway-vs-nginx figure needs both (``make bench-tools`` installs them)."""
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SMOKE_WALL_LIMIT_SECONDS = 120
"""The whole smoke run: about 30 s here."""
THROUGHPUT_FLOOR_PER_SECOND = 100.0
"""GetSession on loopback: about 2,400/s direct and 1,200/s through the gateway here."""
THROUGHPUT_CEILING_PER_SECOND = 100_000.0
"""Far above what one Python gRPC process can serve: a figure above it is a unit error."""

FIGURES = (
    "latency_unary_get_session.png",
    "latency_seed_load.png",
    "latency_webhooks.png",
    "failover_timeline.png",
)
"""The PNG files a run draws (bench.figures): one latency figure per load scenario, and the
failover timeline."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Results = dict[str, Any]


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the smoke run writes its results (its figures go next to it)."""
    return tmp_path_factory.mktemp("bench") / "results.json"


@pytest.fixture(scope="module")
def smoke_run(smoke_out: Path) -> tuple[int, str, Results]:
    """One ``python -m bench.run --smoke`` run: exit code, output, and the parsed JSON."""
    out = smoke_out
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_WALL_LIMIT_SECONDS,
        check=False,
    )
    output = completed.stdout + completed.stderr
    results = json.loads(out.read_text()) if out.exists() else {}
    return completed.returncode, output, results


@pytest.fixture(scope="module")
def results(smoke_run: tuple[int, str, Results]) -> Results:
    """The results document of a run that exited 0 (the run's output on failure)."""
    code, output, found = smoke_run
    assert code == 0, output
    assert isinstance(found.get("summary"), dict), output
    return found


@pytest.fixture(scope="module")
def scenarios(results: Results) -> dict[str, Results]:
    """Each scenario's own results, by name."""
    found = results["scenarios"]
    assert isinstance(found, dict)
    return found


def assert_within(value: object, low: float, high: float, what: str) -> float:
    """``value`` is a finite number (not a bool) with ``low < value < high``; the value."""
    assert isinstance(value, int | float) and not isinstance(value, bool), f"{what}: {value!r}"
    assert math.isfinite(value), f"{what} is {value}"
    assert low < value < high, f"{what} = {value}, outside ({low}, {high})"
    return float(value)


def assert_latencies(figures: Results, deadline_seconds: float, what: str) -> None:
    """p50 ≤ p95 ≤ p99 (those present), all inside (0, the call deadline) in milliseconds."""
    deadline_ms = deadline_seconds * 1000
    present = [key for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms") if key in figures]
    assert "p50_ms" in present, f"{what}: no p50 in {sorted(figures)}"
    values = [assert_within(figures[key], 0, deadline_ms, f"{what} {key}") for key in present]
    assert values == sorted(values), (
        f"{what}: percentiles out of order {dict(zip(present, values, strict=True))}"
    )


class TestTheRun:
    """``python -m bench.run --smoke`` exits 0, runs every scenario and writes the document."""

    def test_exits_zero(self, smoke_run: tuple[int, str, Results]) -> None:
        code, output, _ = smoke_run
        assert code == 0, output

    def test_the_summary_holds_exactly_the_contract_keys(self, results: Results) -> None:
        assert set(results["summary"]) == CONTRACT_KEYS
        assert set(SUMMARY_KEYS) == CONTRACT_KEYS

    def test_every_scenario_ran_and_filled_its_keys(
        self, smoke_run: tuple[int, str, Results], results: Results, scenarios: dict[str, Results]
    ) -> None:
        _, output, _ = smoke_run
        summary = results["summary"]
        assert {name: s["status"] for name, s in scenarios.items()} == dict.fromkeys(
            (scenario.name for scenario in SCENARIOS), "ok"
        ), output
        expected_missing = [] if HAS_NGINX_AND_H2LOAD else ["gateway_vs_nginx_throughput"]
        assert [key for key in CONTRACT_KEYS if summary[key] is None] == expected_missing, output
        for name, scenario in scenarios.items():
            # Rounded to 0.1 s: the ring's pure computation may show 0.0.
            assert_within(scenario["seconds"], -0.01, SMOKE_WALL_LIMIT_SECONDS, f"{name} seconds")

    def test_every_summary_figure_is_a_finite_number_copied_from_its_scenario(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        summary = results["summary"]
        for key, value in summary.items():
            if key in COUNT_KEYS:
                assert value == 0, f"{key} = {value}"
            elif value is not None or HAS_NGINX_AND_H2LOAD:
                assert_within(value, 0, math.inf, key)
        for scenario in SCENARIOS:
            for summary_key, result_key in scenario.summary_keys.items():
                assert summary[summary_key] == scenarios[scenario.name][result_key], summary_key

    def test_records_mode_machine_and_date(self, results: Results) -> None:
        assert results.get("mode") == "smoke"
        machine = results["machine"]
        assert isinstance(machine, dict)
        assert set(machine) == {"cpu_count", "python", "platform"}
        assert isinstance(machine["cpu_count"], int) and machine["cpu_count"] >= 1
        assert isinstance(results["date"], str) and results["date"].startswith("20")


class TestRingFigures:
    """Pure computation on the real ring: movement about the ideal 1/(N+1), modulo about N."""

    def test_movement_stays_near_the_ideal_share_at_every_step(
        self, scenarios: dict[str, Results]
    ) -> None:
        ring = scenarios["ring_movement"]
        assert ring["workspace_count"] == SMOKE_RING_SIZES.workspace_count
        steps = ring["steps"]
        expected_steps = range(
            SMOKE_RING_SIZES.smallest_node_count, SMOKE_RING_SIZES.largest_node_count + 1
        )
        assert [step["nodes_before"] for step in steps] == list(expected_steps)
        for step in steps:
            nodes = step["nodes_before"]
            assert step["ideal_share"] == pytest.approx(1 / (nodes + 1))
            assert_within(step["ring_ratio_to_ideal"], 0.8, 1.3, f"ring ratio at N={nodes}")
            # Modulo sharding moves about N/(N+1) of the workspaces: about N times the ideal.
            assert_within(
                step["modulo_ratio_to_ideal"], 0.8 * nodes, 1.2 * nodes, f"modulo N={nodes}"
            )
        worst = ring["movement_worst_ratio_to_ideal"]
        assert_within(worst, 0.8, 1.3, "movement_worst_ratio_to_ideal")
        assert worst == max(step["ring_ratio_to_ideal"] for step in steps)
        # The baseline is measured, not a copy of the subject: modulo moves far more.
        assert ring["modulo_worst_ratio_to_ideal"] > 2 * worst

    def test_balance_of_eight_equal_nodes_is_within_thirty_percent_of_the_mean(
        self, scenarios: dict[str, Results]
    ) -> None:
        ring = scenarios["ring_movement"]
        per_node = ring["balance_sessions_per_node_8_nodes"]
        assert len(per_node) == BALANCE_NODE_COUNT
        assert sum(per_node.values()) == SMOKE_RING_SIZES.workspace_count
        balance = ring["balance_max_over_mean_8_nodes"]
        assert balance == pytest.approx(
            max(per_node.values()) / (SMOKE_RING_SIZES.workspace_count / BALANCE_NODE_COUNT)
        )
        assert balance >= 1.0  # a maximum is never below the mean
        assert_within(balance, 0.999, 1.3, "balance_max_over_mean_8_nodes")


class TestUnaryFigures:
    """GetSession direct, through the gateway and through the proxyless client: real rates,
    real latencies, and subjects that differ from their baselines."""

    def test_the_figures_name_the_generator_that_ran(self, results: Results) -> None:
        summary = results["summary"]
        assert isinstance(summary["gateway_vs_direct_throughput"], float)
        assert isinstance(summary["client_vs_direct_throughput"], float)
        assert isinstance(summary["gateway_added_p50_ms"], float)
        expected = "h2load" if shutil.which("h2load") else "asyncio"
        assert expected in str(results["load_generator"])

    def test_every_path_served_every_call_at_a_plausible_rate(
        self, scenarios: dict[str, Results]
    ) -> None:
        unary = scenarios["unary_get_session"]
        assert unary["node_count"] == SMOKE_UNARY_SIZES.node_count
        assert unary["session_count"] == SMOKE_UNARY_SIZES.session_count
        planned = SMOKE_UNARY_SIZES.throughput_seconds
        for path in ("direct", "gateway", "client_direct", "client"):
            figures = unary[path]
            assert figures["errors"] == 0, (path, figures)
            rate = assert_within(
                figures["throughput_per_second"],
                THROUGHPUT_FLOOR_PER_SECOND,
                THROUGHPUT_CEILING_PER_SECOND,
                f"{path} throughput",
            )
            # The rate is calls per second of the planned phases, not per ms or per minute.
            assert_within(figures["calls"] / rate, 0.5 * planned, planned + 5, f"{path} seconds")
            assert_latencies(figures, scenarios_unary.CALL_DEADLINE_SECONDS, path)
        assert scenarios["unary_get_session"]["client"]["errors"] == 0

    def test_the_gateway_costs_throughput_and_adds_latency(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        unary = scenarios["unary_get_session"]
        direct, gateway = unary["direct"], unary["gateway"]
        assert gateway["throughput_per_second"] != direct["throughput_per_second"]
        ratio = results["summary"]["gateway_vs_direct_throughput"]
        assert ratio == pytest.approx(
            gateway["throughput_per_second"] / direct["throughput_per_second"]
        )
        # A hop of its own on the same machine: slower than direct, but not crippled.
        assert_within(ratio, 0.15, 0.98, "gateway_vs_direct_throughput")
        added = results["summary"]["gateway_added_p50_ms"]
        assert added == pytest.approx(gateway["p50_ms"] - direct["p50_ms"])
        # A Python gRPC hop adds about half a millisecond here: not nothing, not seconds.
        assert_within(added, 0.05, 50, "gateway_added_p50_ms")

    def test_the_proxyless_client_keeps_up_with_the_generated_stub(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        unary = scenarios["unary_get_session"]
        direct, client = unary["client_direct"], unary["client"]
        assert client["throughput_per_second"] != direct["throughput_per_second"]
        ratio = results["summary"]["client_vs_direct_throughput"]
        assert ratio == pytest.approx(
            client["throughput_per_second"] / direct["throughput_per_second"]
        )
        assert_within(ratio, 0.5, 1.5, "client_vs_direct_throughput")

    @pytest.mark.skipif(
        not HAS_NGINX_AND_H2LOAD, reason="needs nginx and h2load (make bench-tools)"
    )
    def test_nginx_in_front_of_the_same_owner_is_measured_alike(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        unary = scenarios["unary_get_session"]
        nginx, gateway = unary["gateway"]["nginx"], unary["gateway"]
        assert nginx["errors"] == 0
        rate = assert_within(
            nginx["throughput_per_second"],
            THROUGHPUT_FLOOR_PER_SECOND,
            THROUGHPUT_CEILING_PER_SECOND,
            "nginx throughput",
        )
        assert_latencies(nginx, scenarios_unary.CALL_DEADLINE_SECONDS, "nginx")
        ratio = results["summary"]["gateway_vs_nginx_throughput"]
        assert ratio == pytest.approx(gateway["throughput_per_second"] / rate)
        assert_within(ratio, 0.05, 5, "gateway_vs_nginx_throughput")
        # A compiled hop in front of the same node: not faster than the node itself.
        assert_within(unary["nginx_vs_direct_throughput"], 0.1, 1.2, "nginx_vs_direct")


class TestSeedLoadFigures:
    """The checklist load: nothing failed, nothing fenced or moved; every latency inside the
    deadline and above its one-call-at-a-time baseline; CPU per operation measured."""

    def test_every_call_answered_and_the_mesh_stayed_stable(
        self, scenarios: dict[str, Results]
    ) -> None:
        seed = scenarios["seed_load"]
        load = SMOKE_SEED_SIZES.checklist
        assert seed["failed_calls"] == 0, seed["failures"]
        assert seed["not_ready"] == 0
        assert seed["lease_fences"] == 0 and seed["slot_moves"] == 0
        assert set(seed["unstable_events"].values()) == {0}, seed["unstable_events"]
        assert seed["node_count"] == SMOKE_SEED_SIZES.node_count
        assert seed["create_qr"]["count"] == load.session_count
        assert seed["create_ready"]["count"] == load.session_count
        assert seed["send"]["count"] == load.send_count
        assert seed["mixed"]["count"] == load.mixed_count
        assert seed["simnet"] == {"replaced": 0, "max_concurrent_live": 1}

    def test_latencies_are_inside_the_deadline_and_above_the_baseline(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        seed = scenarios["seed_load"]
        deadline = 30.0  # testkit.checklist.CALL_DEADLINE_SECONDS
        for figures in ("create_qr", "create_ready", "send", "mixed"):
            assert_latencies(seed[figures], deadline, figures)
        assert seed["create_qr"]["p95_ms"] <= seed["create_ready"]["p95_ms"]  # QR comes first
        summary = results["summary"]
        assert summary["create_qr_p95_ms"] == seed["create_qr"]["p95_ms"]
        assert summary["send_p95_ms"] == seed["send"]["p95_ms"]
        single = seed["one_at_a_time"]
        assert single["calls"] == SMOKE_SEED_SIZES.baseline_count
        # One create to its QR: several round trips and a durable write; one send: two hops and
        # a durable append. More than a fraction of a millisecond, far less than the deadline.
        assert_within(single["create_qr_p50_ms"], 1, deadline * 1000, "one create to its QR")
        assert_within(single["send_p50_ms"], 0.2, deadline * 1000, "one send")
        assert summary["send_alone_p50_ms"] == single["send_p50_ms"]
        # Thirty calls at once queue: slower than one at a time, not a copy of the baseline.
        for key, ratio in seed["vs_one_at_a_time"].items():
            assert_within(ratio, 1.0, 10_000, f"{key} over its one-at-a-time baseline")

    def test_cpu_per_operation_is_a_plausible_number_of_milliseconds(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        seed = scenarios["seed_load"]
        for phase in ("creates", "sends"):
            per_process = seed["cpu_seconds"][phase]
            # etcd, simnet, every node and the gateway: the load generator is not counted.
            assert {"etcd", "simnet", "gateway"} <= set(per_process), per_process
            nodes = [name for name in per_process if name.startswith("node-")]
            assert len(nodes) == SMOKE_SEED_SIZES.node_count
            assert all(seconds >= 0 for seconds in per_process.values())
            assert per_process["gateway"] > 0  # every call went through it
        summary = results["summary"]
        assert summary["cpu_ms_per_create"] == seed["cpu_ms_per_create"]
        assert summary["cpu_ms_per_send"] == seed["cpu_ms_per_send"]
        # Tens of microseconds would mean a process was missed; seconds a unit error.
        assert_within(seed["cpu_ms_per_create"], 0.2, 500, "cpu_ms_per_create")
        assert_within(seed["cpu_ms_per_send"], 0.1, 200, "cpu_ms_per_send")
        assert seed["cpu_ms_per_create"] > seed["cpu_ms_per_send"]  # a create does more


class TestScaleFigures:
    """Every session READY and placed; memory per session measured in kilobytes."""

    def test_every_session_was_placed_and_is_live_on_simnet(
        self, scenarios: dict[str, Results]
    ) -> None:
        scale = scenarios["scale_8_nodes"]
        assert scale["create_errors"] == {}
        assert scale["sessions"] == SMOKE_SCALE_SIZES.session_count
        assert sum(scale["sessions_per_node"].values()) == SMOKE_SCALE_SIZES.session_count
        assert len(scale["sessions_per_node"]) == SMOKE_SCALE_SIZES.node_count
        assert_within(scale["balance_max_over_mean"], 0.999, 1.5, "scale balance")
        assert scale["simnet_live_accounts"] == SMOKE_SCALE_SIZES.session_count
        assert scale["simnet_replaced"] == 0
        created = assert_within(
            scale["create_all_seconds"], 0, SMOKE_SCALE_SIZES.ready_timeout_seconds, "create all"
        )
        assert scale["sessions_per_second"] == pytest.approx(
            SMOKE_SCALE_SIZES.session_count / created, rel=0.01
        )

    def test_memory_per_session_is_a_plausible_number_of_kilobytes(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        scale = scenarios["scale_8_nodes"]
        assert len(scale["rss_kb"]) == SMOKE_SCALE_SIZES.node_count
        for node_id, rss in scale["rss_kb"].items():
            # A node process (Python, grpc, SQLAlchemy) holds tens of MB, not KB or GB.
            assert_within(rss["baseline"], 10_000, 4_000_000, f"{node_id} RSS KB before")
            assert_within(rss["after"], 10_000, 4_000_000, f"{node_id} RSS KB after")
        per_session = scale["memory_per_session_kb"]
        assert per_session > 0
        assert per_session == results["summary"]["memory_per_session_kb"]
        assert per_session == pytest.approx(scale["rss_added_kb"] / SMOKE_SCALE_SIZES.session_count)
        # 29 KB at 10,000 sessions, about 55 KB at the smoke's 200: bytes or MB would be far off.
        assert_within(per_session, 2, 500, "memory_per_session_kb")


class TestFailoverFigures:
    """kill -9 of a node: its sessions READY elsewhere after about the lease TTL, no QR, no
    second connection."""

    def test_the_sessions_came_back_without_a_qr_or_a_second_connection(
        self, scenarios: dict[str, Results]
    ) -> None:
        failover = scenarios["failover"]
        assert failover["new_qr_codes"] == 0
        assert failover["max_concurrent_live"] == 1
        assert failover["replaced"] == 0
        assert failover["sessions"] == SMOKE_FAILOVER_SIZES.session_count
        assert failover["nodes"] == SMOKE_FAILOVER_SIZES.node_count
        assert 0 < failover["sessions_on_killed_node"] < SMOKE_FAILOVER_SIZES.session_count

    def test_failover_takes_about_the_lease_ttl(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        failover = scenarios["failover"]
        ttl = failover["lease_ttl_seconds"]
        assert ttl == SMOKE_FAILOVER_SIZES.lease_ttl_seconds
        seconds = failover["failover_seconds"]
        assert seconds == results["summary"]["failover_seconds_1000_sessions"]
        # A dead node is noticed when its lease expires, at least a third of the TTL after its
        # last refresh; then survivors restore (under 2 s here).
        assert_within(seconds, ttl / 3, ttl + 15, "failover_seconds")
        # Polling through the gateway sees the last one READY a little later, never earlier.
        assert_within(failover["observed_seconds"], seconds - 0.05, ttl + 20, "observed")
        assert failover["failover_over_lease_ttl"] == pytest.approx(seconds / ttl)

    def test_webhooks_arrive_signed_at_a_plausible_rate_and_latency(
        self, results: Results, scenarios: dict[str, Results]
    ) -> None:
        hooks = scenarios["webhooks"]
        assert hooks["sessions"] == SMOKE_WEBHOOK_SIZES.session_count
        assert hooks["unverified_requests"] == 0
        rate = hooks["webhook_events_per_second"]
        assert rate == results["summary"]["webhook_events_per_second"]
        # Each event is one HTTP POST of a Python client: tens to a few thousand a second.
        assert_within(rate, 10, 20_000, "webhook_events_per_second")
        assert_within(hooks["receiver_alone_events_per_second"], 10, 50_000, "baseline")
        p50, p99 = hooks["webhook_p50_ms"], hooks["webhook_p99_ms"]
        assert p99 == results["summary"]["webhook_p99_ms"]
        # Above a loopback round trip, below the schedule's first retry (5 s): none retried.
        assert 0.1 < p50 <= p99 < 5000, (p50, p99)
        assert hooks["paced_events"] >= SMOKE_WEBHOOK_SIZES.session_count * 4
        assert hooks["node_cpu_ms_per_event"] > 0


def _keys(document: object) -> set[str]:
    """Every key of every dict in a JSON document."""
    if isinstance(document, dict):
        return set(document).union(*(_keys(value) for value in document.values()))
    if isinstance(document, list):
        return set().union(*(_keys(value) for value in document))
    return set()


class TestFigures:
    """The PNG figures (bench.figures): drawn next to the results, real PNGs that read back at
    a plausible size; the failover timeline has series for the killed node and a survivor."""

    def test_figures_go_to_bench_figures_for_make_bench_and_next_to_other_results(self) -> None:
        assert figures_dir_for(Path("bench/results.json")) == Path("bench/figures")
        assert figures_dir_for(Path(".mesh/bench-smoke.json")) == Path(".mesh/bench-smoke-figures")

    def test_every_figure_is_a_png_that_reads_back_at_a_plausible_size(
        self, smoke_run: tuple[int, str, Results], smoke_out: Path
    ) -> None:
        code, output, _ = smoke_run
        assert code == 0, output
        folder = figures_dir_for(smoke_out)
        assert sorted(path.name for path in folder.glob("*.png")) == sorted(FIGURES), output
        for name in FIGURES:
            path = folder / name
            assert f"wrote {path}" in output
            assert path.read_bytes()[:8] == PNG_SIGNATURE, name
            with Image.open(path) as image:
                image.verify()  # the chunks and their checksums
            with Image.open(path) as image:
                assert image.format == "PNG"
                width, height = image.size
                assert 800 <= width <= 2500 and 400 <= height <= 1500, (name, image.size)
                pixels = image.convert("RGB")
                # Not a blank canvas: axes, text and curves in several colours.
                colours = pixels.getcolors(maxcolors=width * height) or []
                assert len(colours) > 50, (name, len(colours))

    def test_the_latency_samples_stay_out_of_the_json(
        self, smoke_out: Path, results: Results
    ) -> None:
        assert SAMPLES_KEY not in _keys(results)
        assert SAMPLES_KEY not in smoke_out.read_text()

    def test_the_failover_timeline_has_data_for_more_than_one_node(
        self, scenarios: dict[str, Results]
    ) -> None:
        failover = scenarios["failover"]
        timeline = failover["ready_timeline"]
        seconds, by_node = timeline["seconds"], timeline["ready_by_node"]
        assert seconds[0] == 0 and seconds == sorted(seconds), seconds
        assert len(seconds) >= 3, seconds  # at the kill, polls, the final poll of every session
        assert len(by_node) == SMOKE_FAILOVER_SIZES.node_count
        assert all(len(series) == len(seconds) for series in by_node.values()), by_node
        with_sessions = [node for node, series in by_node.items() if max(series) > 0]
        assert len(with_sessions) >= 2, by_node
        killed = by_node[failover["killed_node"]]
        # At the kill it held its sessions; at the end none is READY there.
        assert killed[0] == failover["sessions_on_killed_node"] and killed[-1] == 0, killed
        sessions = SMOKE_FAILOVER_SIZES.session_count
        assert sum(series[0] for series in by_node.values()) == sessions
        assert sum(series[-1] for series in by_node.values()) == sessions
        # Every READY count is a count of sessions: never negative, never above the total.
        assert all(0 <= count <= sessions for series in by_node.values() for count in series)
        # The survivors gained the killed node's sessions: some sample shows one READY on a
        # survivor above what it held at the kill, no later than the poll that saw the last.
        gained = [
            at
            for index, at in enumerate(seconds)
            if any(
                series[index] > series[0]
                for node, series in by_node.items()
                if node != failover["killed_node"]
            )
        ]
        assert gained and gained[0] <= failover["observed_seconds"] + 0.01, (gained, failover)
