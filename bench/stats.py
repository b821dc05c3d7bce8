"""The few statistics the benchmark reports: percentiles of latencies and ratios to baselines,
and the bounded latency samples its figures are drawn from."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of ``values`` (nearest rank), None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def percentile_ms(latencies_seconds: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of latencies in seconds, in milliseconds."""
    found = percentile(latencies_seconds, fraction)
    return None if found is None else found * 1000


def median_ms(latencies_seconds: Sequence[float]) -> float | None:
    """The median of latencies in seconds, in milliseconds."""
    return statistics.median(latencies_seconds) * 1000 if latencies_seconds else None


def ratio(measured: float | None, baseline: float | None) -> float | None:
    """``measured / baseline``, None when either is missing (or the baseline is zero)."""
    if measured is None or not baseline:
        return None
    return measured / baseline


MAX_SAMPLES = 20_000
"""The most latencies one series keeps for the figures (``bench.figures``)."""
SAMPLES_KEY = "_latency_samples"
"""The key under which a scenario's results pass their :class:`LatencySample` series (by name)
to ``bench.run``, which takes them out before writing results.json (never written there)."""


@dataclass(frozen=True)
class LatencySample:
    """One series of per-call latencies, bounded: at most ``MAX_SAMPLES`` of them, sorted, at
    evenly spaced ranks (the fastest and the slowest always among them)."""

    count: int
    """How many latencies were measured (``len(sorted_ms)`` when not more than the bound)."""
    sorted_ms: tuple[float, ...]
    """The kept latencies in milliseconds, ascending."""

    def ranks(self) -> list[int]:
        """Each kept latency's rank (0-based) among all ``count`` measured."""
        kept = len(self.sorted_ms)
        if kept <= 1:
            return list(range(kept))
        return [round(index * (self.count - 1) / (kept - 1)) for index in range(kept)]


def latency_sample(
    latencies: Sequence[float], *, in_seconds: bool = True, limit: int = MAX_SAMPLES
) -> LatencySample:
    """A bounded :class:`LatencySample` of ``latencies`` (seconds, or ms with
    ``in_seconds=False``)."""
    scale = 1000.0 if in_seconds else 1.0
    ordered = sorted(latencies)
    if len(ordered) > limit:
        ordered = [ordered[round(i * (len(ordered) - 1) / (limit - 1))] for i in range(limit)]
    return LatencySample(count=len(latencies), sorted_ms=tuple(value * scale for value in ordered))
