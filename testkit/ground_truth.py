"""The ground-truth checks against simnet's record: every acknowledged message delivered
exactly once, and no account ever with two live connections (nor a "connection replaced")."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from testkit.process_mesh import ProcessMesh
from testkit.workload import LoadReport, SessionKey, account_of


def assert_never_two_live(stats: dict[str, Any], sessions: Sequence[SessionKey]) -> None:
    """simnet's ground truth: no account ever had two live connections, none was replaced."""
    accounts = stats["accounts"]
    doubled = {
        account_of(key): accounts[account_of(key)]["max_concurrent_live"]
        for key in sessions
        if accounts.get(account_of(key), {}).get("max_concurrent_live", 0) > 1
    }
    assert not doubled, f"accounts with two live connections at once: {doubled}"
    replaced = {a: c["replaced"] for a, c in accounts.items() if c["replaced"]}
    assert stats["replaced"] == 0, f"connection_replaced events: {replaced}"


def undelivered(stats: dict[str, Any], report: LoadReport) -> dict[str, list[str]]:
    """Per account, the acknowledged message ids simnet has not delivered (sorted)."""
    missing: dict[str, list[str]] = {}
    for account, ids in report.acked.items():
        delivered = set(stats["accounts"].get(account, {}).get("delivered_ids", ()))
        lost = sorted(ids - delivered)
        if lost:
            missing[account] = lost
    return missing


async def wait_all_delivered(
    mesh: ProcessMesh, report: LoadReport, *, timeout_seconds: float = 20.0
) -> dict[str, Any]:
    """Wait until simnet has delivered every acknowledged message; simnet's stats then.
    Fails naming what is still missing at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        stats = await mesh.simnet_stats()
        missing = undelivered(stats, report)
        if not missing:
            return stats
        if time.monotonic() > deadline:
            count = sum(len(ids) for ids in missing.values())
            example = dict(list(missing.items())[:3])
            raise AssertionError(f"{count} acknowledged messages never delivered (e.g. {example})")
        await asyncio.sleep(0.1)


def assert_exactly_once(stats: dict[str, Any], report: LoadReport) -> None:
    """Every acknowledged id delivered exactly once; no id of any account delivered twice."""
    assert stats["duplicate_deliveries"] == 0, f"{stats['duplicate_deliveries']} duplicates"
    twice: dict[str, list[str]] = {}
    for account, counts in stats["accounts"].items():
        repeated = [i for i, n in Counter(counts.get("delivered_ids", ())).items() if n > 1]
        if repeated:
            twice[account] = repeated
    assert not twice, f"delivered twice: {twice}"
    missing = undelivered(stats, report)
    assert not missing, f"acknowledged but never delivered: {dict(list(missing.items())[:3])}"
