"""Which archives retention lets go: the grandfather-father-son rule over hours and days.

Per cluster, the newest archive of each of the newest ``keep_hourly`` clock hours that hold
one is kept, and so is the newest of each of the newest ``keep_daily`` days (UTC) that hold
one; an archive either rule keeps is kept, the others are pruned. Hours and days without a
backup are skipped, not counted, so a mesh that was down for a week still keeps its last
``keep_daily`` days of archives. Times come from the archive names.
"""

from __future__ import annotations

import math

from backup._stored import StoredArchive, parse_archive_name
from registry import InvalidInput

_HOUR_SECONDS = 3600
_DAY_SECONDS = 86400


def _newest_per_period(
    newest_first: list[tuple[float, StoredArchive]], *, period_seconds: int, periods: int
) -> set[str]:
    """Names of the newest archive of each of the newest ``periods`` periods holding one."""
    kept: set[str] = set()
    seen_periods: set[int] = set()
    for taken_at_unix, archive in newest_first:
        period = math.floor(taken_at_unix / period_seconds)
        if period in seen_periods:
            continue
        if len(seen_periods) == periods:
            break
        seen_periods.add(period)
        kept.add(archive.name)
    return kept


def select_for_pruning(
    archives: list[StoredArchive], *, keep_hourly: int, keep_daily: int, now_unix: float
) -> list[StoredArchive]:
    """The archives retention deletes, sorted by name (see the module docstring).

    Only names of the backup scheme are considered: other files are never returned. An
    archive dated after ``now_unix`` (taken by a host whose clock runs ahead) is never
    returned and does not take a place. Raises ``InvalidInput`` for a negative count, or
    for both counts 0, which would delete every archive.
    """
    if keep_hourly < 0 or keep_daily < 0:
        raise InvalidInput(
            f"retention counts must not be negative (hourly {keep_hourly}, daily {keep_daily})"
        )
    if keep_hourly + keep_daily == 0:
        raise InvalidInput("retention keeps nothing: keep at least one hourly or daily archive")
    by_cluster: dict[str, list[tuple[float, StoredArchive]]] = {}
    for archive in archives:
        parsed = parse_archive_name(archive.name)
        if parsed is None:
            continue
        cluster, taken_at_unix = parsed
        if taken_at_unix > now_unix:
            continue
        by_cluster.setdefault(cluster, []).append((taken_at_unix, archive))
    doomed: list[StoredArchive] = []
    for dated in by_cluster.values():
        dated.sort(key=lambda each: (each[0], each[1].name), reverse=True)
        kept = _newest_per_period(
            dated, period_seconds=_HOUR_SECONDS, periods=keep_hourly
        ) | _newest_per_period(dated, period_seconds=_DAY_SECONDS, periods=keep_daily)
        doomed.extend(archive for _, archive in dated if archive.name not in kept)
    return sorted(doomed, key=lambda archive: archive.name)
