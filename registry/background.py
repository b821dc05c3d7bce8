"""Running the background work of the mesh's long-lived parts (keepalives, watches, loops):
stopping a task without losing the caller's own cancel, and calling back without letting a
failing callback end the loop that calls it.

``task.cancel()`` then ``with suppress(CancelledError): await task`` — the usual way — also
swallows a cancel aimed at the *caller* while it waits, so a bounded stop (``asyncio.timeout``
around it) can silently run past its bound. :func:`stop_task` waits without that: the caller's
own cancel still propagates, and the task's end is never raised into the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

_log = structlog.get_logger(__name__)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended.

    A failure of the task itself is logged, not raised: the caller is stopping it.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        _log.warning("background_task_failed", task=task.get_name(), error=task.exception())


def call_safely(callback: Callable[..., object], *arguments: object) -> None:
    """Call ``callback(*arguments)``; a failure is logged, never raised.

    For loops that serve many listeners (watches, keepalives, fences): one listener's bug
    must not end the loop everyone else relies on.
    """
    try:
        callback(*arguments)
    except Exception:
        _log.exception("callback_failed", callback=repr(callback))
