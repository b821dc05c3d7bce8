"""The few statistics the benchmark reports: percentiles of latencies and ratios to baselines."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


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
