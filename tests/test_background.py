"""Stopping a background task ends it, and a bound around the stop still holds."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog.testing

from registry import stop_task


class TestStopTask:
    """``stop_task`` cancels and waits, without swallowing the caller's own cancel."""

    async def test_the_task_is_ended(self) -> None:
        task = asyncio.create_task(asyncio.sleep(60))
        await stop_task(task)
        assert task.cancelled()

    async def test_a_bound_around_a_slow_stop_holds(self) -> None:
        async def slow_to_stop() -> None:
            try:
                await asyncio.sleep(60)
            finally:
                await asyncio.shield(asyncio.sleep(2))  # still cleaning up when the bound ends

        task = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)
        started_at = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await stop_task(task)
        assert time.monotonic() - started_at < 1.5
        await stop_task(task)

    async def test_a_failure_of_the_task_is_logged_not_raised(self) -> None:
        async def fails() -> None:
            raise RuntimeError("broken")

        task = asyncio.create_task(fails(), name="failing")
        await asyncio.sleep(0)
        with structlog.testing.capture_logs() as events:
            await stop_task(task)
        assert [(e["event"], e["log_level"], e["task"]) for e in events] == [
            ("background_task_failed", "warning", "failing")
        ]
        assert "broken" in repr(events[0]["error"])

    async def test_none_is_nothing_to_stop(self) -> None:
        await stop_task(None)
