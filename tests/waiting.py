"""Waiting on conditions with deadlines (never sleep-and-hope), and process handles."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]],
    *,
    timeout_seconds: float = 10.0,
    interval_seconds: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``condition`` (sync or async) until it returns a truthy value; fail after the deadline.

    Exceptions raised by the condition count as "not yet"; the last one is reported.
    """
    deadline = time.monotonic() + timeout_seconds
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except AssertionError as error:
            last_error = error
        except Exception as error:
            last_error = error
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{message} not met within {timeout_seconds}s (last error: {last_error!r})"
            )
        await asyncio.sleep(interval_seconds)


@dataclass
class EtcdServer:
    """A running etcd process."""

    process: subprocess.Popen[bytes]
    url: str
    log: IO[bytes]
    data_dir: Path

    def stop(self) -> None:
        """Terminate and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
