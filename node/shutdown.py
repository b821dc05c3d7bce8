"""Bounded, logged shutdown steps: a node's stop never hangs on one part of it.

Every step of :meth:`node.server.NodeServer.stop` runs through :func:`run_step`: a step that
takes long is logged with its duration, and one that outlives its limit is abandoned with an
error log, so the node still revokes its lease and exits (a supervisor's SIGKILL would lose
more than one late step does). The stop log then says which part was slow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import structlog

_log = structlog.get_logger(__name__)

SLOW_STEP_SECONDS = 1.0
"""A step slower than this is logged (at warning) with its duration."""


async def run_step(
    name: str, step: Awaitable[object], *, node_id: str, limit_seconds: float
) -> bool:
    """Await ``step`` for at most ``limit_seconds``; whether it finished in time."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit_seconds):
            await step
    except TimeoutError:
        _log.error(
            "node_stop_step_abandoned",
            node_id=node_id,
            step=name,
            limit_seconds=round(limit_seconds, 1),
        )
        return False
    elapsed = time.monotonic() - started
    if elapsed > SLOW_STEP_SECONDS:
        _log.warning("node_stop_step_slow", node_id=node_id, step=name, seconds=round(elapsed, 2))
    return True
