"""A circuit breaker per receiver: after ``threshold`` failed attempts in a row it opens,
and deliveries to that receiver wait (without spending attempts) until the cool-down has
passed; then one trial goes through — success closes it, failure opens it again for twice as
long (at most ``max_open_seconds``). A receiver that is down costs the node a timer, not a
stream of doomed requests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

DEFAULT_THRESHOLD = 5
DEFAULT_OPEN_SECONDS = 5.0
DEFAULT_MAX_OPEN_SECONDS = 300.0


class CircuitBreaker:
    """One receiver's breaker (see the module docstring)."""

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        open_seconds: float = DEFAULT_OPEN_SECONDS,
        max_open_seconds: float = DEFAULT_MAX_OPEN_SECONDS,
        on_open: Callable[[], None] = lambda: None,
    ) -> None:
        self._threshold = threshold
        self._open_seconds = open_seconds
        self._max_open_seconds = max_open_seconds
        self._next_open_seconds = open_seconds
        self._on_open = on_open
        self._failures = 0
        self._open_until = 0.0
        self._trial_running = False
        self._changed = asyncio.Event()

    @property
    def is_open(self) -> bool:
        """Whether deliveries wait now."""
        return self._open_until > time.monotonic() or self._trial_running

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Wait until an attempt may go, then make it inside the block; report its outcome
        with :meth:`succeeded` / :meth:`failed` (an attempt left without either, cancelled,
        counts as neither)."""
        is_trial = False
        while True:
            wait = self._open_until - time.monotonic()
            if self._trial_running:
                await self._changed.wait()
                continue
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
                continue
            if self._open_until:  # the cool-down passed: this attempt is the trial
                is_trial = True
                self._trial_running = True
            break
        try:
            yield
        finally:
            if is_trial:
                self._trial_running = False
                self._notify()

    def succeeded(self) -> None:
        """An attempt was answered (2xx, or a refusal: the receiver is up)."""
        self._failures = 0
        if self._open_until:
            self._open_until = 0.0
            self._next_open_seconds = self._open_seconds
            self._notify()

    def failed(self) -> None:
        """An attempt failed in a way that says the receiver is down or overwhelmed."""
        self._failures += 1
        if self._failures >= self._threshold or self._open_until:
            self._open_until = time.monotonic() + self._next_open_seconds
            self._next_open_seconds = min(self._next_open_seconds * 2, self._max_open_seconds)
            self._failures = 0
            self._on_open()
            self._notify()
