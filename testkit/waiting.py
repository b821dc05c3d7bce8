"""Waiting on conditions with deadlines, never sleep-and-hope: :func:`eventually` for any
condition, :func:`wait_listening` for a child process that must start accepting connections."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from registry import parse_host_port

POLL_INTERVAL_SECONDS = 0.05
"""How often :func:`wait_listening` tries to connect."""


class ProcessStartError(RuntimeError):
    """A child process exited, or never listened, while it was being started."""


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]],
    *,
    timeout_seconds: float = 10.0,
    interval_seconds: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``condition`` (sync or async) until it returns a truthy value, and return that
    value; fail after the deadline.

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
        except Exception as error:  # AssertionError included: "not yet"
            last_error = error
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{message} not met within {timeout_seconds}s (last error: {last_error!r})"
            )
        await asyncio.sleep(interval_seconds)


def _never_exited() -> int | None:
    return None


def _no_log() -> str:
    return ""


async def wait_listening(
    address: str,
    *,
    name: str = "process",
    exit_code: Callable[[], int | None] = _never_exited,
    log_tail: Callable[[], str] = _no_log,
    timeout_seconds: float = 30.0,
) -> None:
    """Wait until something accepts TCP connections on ``address`` (``host:port``).

    ``exit_code`` tells whether the process meant to listen there has exited (its code, or
    None while it runs): then this fails at once instead of at the deadline. Raises
    :class:`ProcessStartError` naming ``name``, with ``log_tail()`` appended.
    """
    host, port = parse_host_port(address, field="address")
    deadline = time.monotonic() + timeout_seconds
    while True:
        code = exit_code()
        if code is not None:
            raise ProcessStartError(f"{name} exited during start (code {code})\n{log_tail()}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() >= deadline:
                raise ProcessStartError(
                    f"{name} did not listen on {address} within {timeout_seconds}s\n{log_tail()}"
                ) from None
            await asyncio.sleep(POLL_INTERVAL_SECONDS)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
