"""When a test runs close to its pytest-timeout, print where each asyncio task is waiting.

pytest-timeout dumps every thread's stack, but in an asyncio test the main thread only shows
the event loop's ``select``: the await that hangs is in a task's coroutine stack. Shortly
before the timeout this plugin prints the stack of every task of each running loop (to the
real stderr, so it is seen even when output is captured), then pytest-timeout fails the test
as before. Reading a task's stack from another thread only reads frames; it changes nothing.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Generator

import pytest

REPORT_SHARE_OF_TIMEOUT = 0.9
"""The report comes at this share of the test's timeout, before pytest-timeout ends it."""


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    return [
        thing
        for thing in gc.get_objects()
        if isinstance(thing, asyncio.AbstractEventLoop) and thing.is_running()
    ]


def _report(test_id: str) -> None:
    out = sys.__stderr__
    if out is None:
        return
    print(f"\n===== asyncio tasks of {test_id}, close to its timeout =====", file=out)
    for loop in _running_loops():
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the set changed while copied: try once more
            tasks = list(asyncio.all_tasks(loop))
        for task in tasks:
            print(f"--- {task!r}", file=out)
            for frame in task.get_stack(limit=20):
                # Compiled (Cython) frames may have no line number.
                print(
                    f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}",
                    file=out,
                )
    print("===== end of asyncio tasks =====", file=out, flush=True)


def _timeout_seconds(item: pytest.Item) -> float | None:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    configured = item.config.getini("timeout")
    return float(configured) if configured else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Arm a timer for the test's setup, call and teardown; disarm it afterwards."""
    timeout = _timeout_seconds(item)
    timer = None
    if timeout:
        timer = threading.Timer(timeout * REPORT_SHARE_OF_TIMEOUT, _report, (item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
