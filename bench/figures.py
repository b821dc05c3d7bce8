"""The benchmark's figures, as PNG files: the latency distribution of each load scenario (a
percentile plot of its per-call latencies) and the failover timeline (sessions READY per node
after the kill -9).

``bench.run`` calls :func:`draw_figures` after writing results.json: ``make bench`` writes
them to ``bench/figures/``, the smoke run next to its results file. Drawn with matplotlib's
non-interactive Agg backend (no display needed), from the results document and the latency
samples the scenarios passed out (:class:`bench.stats.LatencySample`, never in the JSON).

A percentile plot puts the percentile on the x axis on a logit scale, so p50, p90, p99 and
p99.9 sit at even steps and the tail is not squeezed into the last pixel, and the latency on a
logarithmic y axis: a curve that rises late and steeply is a long tail.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from bench.stats import LatencySample, percentile

matplotlib.use("Agg")

Samples = Mapping[str, Mapping[str, LatencySample]]
"""Scenario name → series name → its latency sample."""

DPI = 110
PERCENTILE_TICKS = {
    0.01: "p1",
    0.1: "p10",
    0.5: "p50",
    0.9: "p90",
    0.99: "p99",
    0.999: "p99.9",
    0.9999: "p99.99",
}
KILLED_COLOUR = "tab:red"
NODE_COLOURS = ("tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:cyan")


@dataclass(frozen=True)
class _Series:
    name: str
    """The series' name in the scenario's samples."""
    label: str
    colour: str
    dashed: bool = False


@dataclass(frozen=True)
class _Target:
    series: str
    fraction: float
    summary_key: str
    """The summary key whose target (``run.TARGETS``) is drawn, a star at ``fraction``."""


UNARY_H2LOAD_SERIES = (
    _Series("direct", "direct to the owner node (baseline)", "tab:blue"),
    _Series("gateway", "through the gateway", "tab:red"),
    _Series("gateway.nginx", "through nginx (grpc_pass)", "tab:green"),
    _Series("gateway.bare_proxy", "through a bare grpc.aio forwarder", "tab:gray"),
)
UNARY_CLIENT_SERIES = (
    _Series("client_direct", "generated stub to the owner (baseline)", "tab:blue"),
    _Series("client", "proxyless client", "tab:purple"),
)
SEED_SERIES = (
    _Series("create_qr", "create → QR code", "tab:blue"),
    _Series("create_ready", "create → READY", "tab:cyan"),
    _Series("send", "send, all at once", "tab:red"),
    _Series("mixed", "mixed calls (create, send, read)", "tab:green"),
    _Series("create_qr_one_at_a_time", "create → QR code, one at a time", "tab:blue", True),
    _Series("send_one_at_a_time", "send, one at a time", "tab:red", True),
)
SEED_TARGETS = (
    _Target("create_qr", 0.95, "create_qr_p95_ms"),
    _Target("send", 0.95, "send_p95_ms"),
    _Target("mixed", 0.50, "mixed_median_ms"),
)
WEBHOOK_SERIES = (_Series("event", "event emitted → receiver's 2xx", "tab:orange"),)
WEBHOOK_TARGETS = (_Target("event", 0.99, "webhook_p99_ms"),)


def draw_figures(
    results: Mapping[str, Any],
    samples: Samples,
    out_dir: Path,
    *,
    targets: Mapping[str, str] | None = None,
) -> list[Path]:
    """Draw every figure the results allow into ``out_dir`` (created); the files written.
    A scenario that did not run or failed has no figure. ``targets`` (summary key → "<= 500"
    as in ``bench.run.TARGETS``) are marked on the latency curves they apply to."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = targets or {}
    caption = _caption(results)
    scenarios: Mapping[str, Any] = results.get("scenarios", {})
    written: list[Path] = []
    if unary := samples.get("unary_get_session"):
        found = scenarios.get("unary_get_session", {})
        figure = Figure(figsize=(13, 5.6), layout="constrained")
        left, right = figure.subplots(1, 2, sharey=True)
        _percentile_plot(
            left,
            unary,
            UNARY_H2LOAD_SERIES,
            title=f"load generator: {found.get('load_generator', '?')}",
        )
        _percentile_plot(
            right,
            unary,
            UNARY_CLIENT_SERIES,
            title=f"load generator: {found.get('client_load_generator', '?')}",
        )
        right.set_ylabel("")
        for panel in (left, right):  # the top left of these plots stays empty
            panel.legend(loc="upper left", fontsize=8, framealpha=0.9)
        figure.suptitle("GetSession latency, one call at a time, by path", fontweight="bold")
        written.append(_save(figure, out_dir / "latency_unary_get_session.png", caption))
    if seed := samples.get("seed_load"):
        found = scenarios.get("seed_load", {})
        figure = Figure(figsize=(10, 7), layout="constrained")
        axes = figure.subplots()
        _percentile_plot(
            axes,
            seed,
            SEED_SERIES,
            title=(
                f"{found.get('sessions', '?')} sessions on {_nodes(found.get('node_count'))}: "
                f"{found.get('creates_at_once', '?')} creates at once, "
                f"{found.get('sends_at_once', '?')} sends at once, "
                f"{found.get('mixed_calls', '?')} mixed calls from "
                f"{found.get('mixed_workers', '?')} callers"
            ),
        )
        _mark_targets(axes, seed, SEED_TARGETS, SEED_SERIES, targets)
        _legend_below(figure, axes)
        figure.suptitle("Checklist load (seed_load): latency per call", fontweight="bold")
        written.append(_save(figure, out_dir / "latency_seed_load.png", caption))
    if hooks := samples.get("webhooks"):
        found = scenarios.get("webhooks", {})
        figure = Figure(figsize=(10, 6), layout="constrained")
        axes = figure.subplots()
        _percentile_plot(
            axes,
            hooks,
            WEBHOOK_SERIES,
            title=(
                f"{found.get('sessions', '?')} sessions on {_nodes(found.get('node_count'))}, "
                f"paced at {_number(found.get('paced_events_per_second'))} events/s"
            ),
            of="events",
        )
        _mark_targets(axes, hooks, WEBHOOK_TARGETS, WEBHOOK_SERIES, targets)
        _legend_below(figure, axes)
        figure.suptitle("Webhooks: delivery latency per event", fontweight="bold")
        written.append(_save(figure, out_dir / "latency_webhooks.png", caption))
    failover = scenarios.get("failover", {})
    if failover.get("status") == "ok" and failover.get("ready_timeline", {}).get("seconds"):
        written.append(
            _save(
                _failover_figure(failover),
                out_dir / "failover_timeline.png",
                caption,
                outside=True,
            )
        )
    return written


def _percentile_plot(
    axes: Axes,
    samples: Mapping[str, LatencySample],
    series: Sequence[_Series],
    *,
    title: str,
    of: str = "calls",
) -> None:
    """One curve per series present: latency (ms, log) against percentile (logit)."""
    lowest, highest = 0.05, 0.99
    for each in series:
        sample = samples.get(each.name)
        if sample is None or not sample.sorted_ms:
            continue
        positions = [(rank + 0.5) / sample.count for rank in sample.ranks()]
        lowest, highest = min(lowest, positions[0]), max(highest, positions[-1])
        p50 = percentile(sample.sorted_ms, 0.50) or 0.0
        p99 = percentile(sample.sorted_ms, 0.99) or 0.0
        axes.plot(
            positions,
            sample.sorted_ms,
            color=each.colour,
            linestyle="--" if each.dashed else "-",
            linewidth=1.8,
            marker="o" if len(positions) <= 40 else None,
            markersize=3,
            label=f"{each.label}: p50 {_number(p50)} ms, p99 {_number(p99)} ms "
            f"(n = {sample.count:,})",
        )
    axes.set_xscale("logit")
    axes.set_xlim(max(lowest, 1e-5), min(highest, 1 - 1e-5))
    shown = [tick for tick in PERCENTILE_TICKS if lowest <= tick <= highest]
    axes.xaxis.set_major_locator(FixedLocator(shown))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _percentile_label(value)))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(f"percentile of {of} (logit scale: the tail spread out)")
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="major", alpha=0.35)


def _mark_targets(
    axes: Axes,
    samples: Mapping[str, LatencySample],
    marks: Sequence[_Target],
    series: Sequence[_Series],
    targets: Mapping[str, str],
) -> None:
    """A star at (the target's percentile, the target's latency) per target whose series is
    drawn: the curve should pass under it."""
    labels = {each.name: each for each in series}
    for mark in marks:
        limit = _target_ms(targets.get(mark.summary_key, ""))
        each = labels[mark.series]
        sample = samples.get(mark.series)
        if limit is None or sample is None or not sample.sorted_ms:
            continue
        axes.plot(
            [mark.fraction],
            [limit],
            marker="*",
            markersize=13,
            linestyle="none",
            color=each.colour,
            markeredgecolor="black",
            label=f"target: {_percentile_label(mark.fraction)} of {each.label} "
            f"≤ {_number(limit)} ms",
        )


def _failover_figure(failover: Mapping[str, Any]) -> Figure:
    timeline = failover["ready_timeline"]
    seconds: list[float] = list(timeline["seconds"])
    by_node: dict[str, list[int]] = dict(timeline["ready_by_node"])
    killed = str(failover.get("killed_node", ""))
    pad = max(0.25, 0.05 * (seconds[-1] if seconds else 1.0))
    xs = [-pad, *seconds, seconds[-1] + pad]
    figure = Figure(figsize=(12, 5.6), layout="constrained")
    axes = figure.subplots()
    colours = iter(NODE_COLOURS * 4)
    for node_id in sorted(by_node):
        counts = by_node[node_id]
        ys = [counts[0], *counts, counts[-1]]
        is_killed = node_id == killed
        axes.step(
            xs,
            ys,
            where="post",
            color=KILLED_COLOUR if is_killed else next(colours),
            linewidth=2.2,
            label=f"{node_id} (killed)" if is_killed else f"{node_id} (survivor)",
        )
    totals = [sum(column) for column in zip(*by_node.values(), strict=True)]
    axes.step(
        xs,
        [totals[0], *totals, totals[-1]],
        where="post",
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=f"all nodes (of {_count(failover.get('sessions'))} sessions)",
    )
    axes.axvline(0, color="black", linewidth=1)
    ttl = failover.get("lease_ttl_seconds")
    if ttl:
        axes.axvline(ttl, color="gray", linestyle=":", linewidth=1.5, label=f"lease TTL {ttl} s")
    if (back := failover.get("failover_seconds")) is not None:
        axes.axvline(
            back,
            color="tab:green",
            linestyle="--",
            linewidth=1.2,
            label=f"last moved session live again (simnet): {back:.2f} s",
        )
    if (seen := failover.get("observed_seconds")) is not None:
        axes.axvline(
            seen,
            color="tab:purple",
            linestyle="-.",
            linewidth=1.2,
            label=f"all seen READY through the gateway: {seen:.2f} s",
        )
    axes.annotate(
        "kill -9",
        xy=(0, 1),
        xycoords=("data", "axes fraction"),
        xytext=(4, -14),
        textcoords="offset points",
        fontsize=9,
    )
    axes.set_xlim(xs[0], xs[-1])
    axes.set_ylim(bottom=0, top=max(totals) * 1.08 if totals else 1)
    axes.set_xlabel("time since kill -9 (s)")
    axes.set_ylabel("sessions READY (count)")
    axes.set_title(
        "The killed node serves nothing from the kill; its sessions are polled (GetSession "
        "through the gateway) and each counts on the survivor\nthat answered it READY, as the "
        "answer arrives; the survivors' own sessions count where they were placed until the "
        "last poll, of every session",
        fontsize=9,
    )
    axes.grid(True, alpha=0.35)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.suptitle(
        f"Failover: kill -9 of {killed} holding "
        f"{_count(failover.get('sessions_on_killed_node'))} of "
        f"{_count(failover.get('sessions'))} sessions on {_nodes(failover.get('nodes'))}",
        fontweight="bold",
    )
    return figure


def _save(figure: Figure, path: Path, caption: str, *, outside: bool = False) -> Path:
    """Write ``figure`` with the run's caption in the last axes' lower right corner (empty in a
    percentile plot: the slow calls are at the right, high up), or ``outside`` it on the right
    (under a legend there)."""
    axes = figure.axes[-1]
    axes.text(
        1.01 if outside else 0.99,
        0.01,
        caption,
        transform=axes.transAxes,
        ha="left" if outside else "right",
        va="bottom",
        fontsize=7,
        color="dimgray",
    )
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _caption(results: Mapping[str, Any]) -> str:
    machine = results.get("machine", {})
    mode = "make bench" if results.get("mode") == "full" else "make bench-smoke (small sizes)"
    return (
        f"sessionmesh {mode}\n{results.get('date', '?')}, {machine.get('cpu_count', '?')} CPUs, "
        f"Python {machine.get('python', '?')}"
    )


def _percentile_label(fraction: float) -> str:
    return PERCENTILE_TICKS.get(fraction, f"p{fraction * 100:g}")


def _legend_below(figure: Figure, axes: Axes) -> None:
    """The axes' legend under the plot, in two columns: the curves fill the whole plot."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _nodes(count: object) -> str:
    return f"{count} node" if count == 1 else f"{_count(count)} nodes"


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _target_ms(target: str) -> float | None:
    """The limit of an upper-bound target (``"<= 500"``), None for any other kind."""
    found = re.fullmatch(r"\s*<=?\s*([\d.,]+)\s*", target)
    return float(found.group(1).replace(",", "")) if found else None
