"""Stopping the background tasks of the mesh's long-lived parts (keepalives, watches, loops).

``task.cancel()`` then ``with suppress(CancelledError): await task`` — the usual way — also
swallows a cancel aimed at the *caller* while it waits, so a bounded stop (``asyncio.timeout``
around it) can silently run past its bound. :func:`stop_task` waits without that: the caller's
own cancel still propagates, and the task's end is never raised into the caller.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

_log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended.

    A failure of the task itself is logged, not raised: the caller is stopping it.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        _log.warning("background_task_failed task=%s error=%r", task.get_name(), task.exception())
