"""Retry policy as data (which codes retry, jittered backoff bounded by the caller's
deadline) and :class:`Attempts`, the one decision of where a failed call goes next.

Used by the gateway and by the proxyless client. A server hint
(``sessionmesh-retry-after-ms`` in trailing metadata) replaces the computed backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc

from registry.errors import OWNER_METADATA_KEY, RETRY_AFTER_METADATA_KEY, MeshError

_log = logging.getLogger(__name__)

MetadataPairs = Iterable[tuple[str, str | bytes]]


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before retrying a failed call."""

    retryable_codes: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
    )
    """Status codes that may succeed when the same call is sent again. Every SessionService RPC
    is idempotent (by session id, by client message id), so a CANCELLED that the caller did not
    cause — a node stopping, or its channel closing as it leaves — is safe to send again."""
    initial_backoff_ms: int = 20
    """Delay before the first retry, before jitter."""
    max_backoff_ms: int = 500
    """Upper bound of the computed delay, before jitter."""
    multiplier: float = 2.0
    """Growth of the delay per attempt."""
    jitter: float = 0.2
    """Relative spread of the delay: ±20 % by default, so retries of many callers scatter."""
    max_attempts: int = 5
    """Most attempts per call, the first one included (a bound when the caller set no deadline)."""

    def is_retryable(self, code: grpc.StatusCode) -> bool:
        """Whether a call that ended with ``code`` may be retried."""
        return code in self.retryable_codes

    def backoff_ms(self, attempt: int, *, random_unit: float | None = None) -> float:
        """The jittered delay before retry number ``attempt`` (1 = first retry).

        ``random_unit`` in [0, 1) replaces the random draw (for tests).
        """
        base = min(
            self.initial_backoff_ms * self.multiplier ** max(attempt - 1, 0), self.max_backoff_ms
        )
        unit = random.random() if random_unit is None else random_unit
        return max(base * (1 + self.jitter * (2 * unit - 1)), 0.0)


DEFAULT_RETRY_POLICY = RetryPolicy()


def retry_after_hint_ms(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> int | None:
    """The server's ``sessionmesh-retry-after-ms`` hint, or None when absent or malformed."""
    for key, value in trailing_metadata or ():
        if key == RETRY_AFTER_METADATA_KEY:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            return int(text) if text.isdigit() else None
    return None


def next_delay_seconds(
    policy: RetryPolicy,
    *,
    attempt: int,
    code: grpc.StatusCode,
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None = None,
    time_remaining_seconds: float | None = None,
) -> float | None:
    """Seconds to wait before retry number ``attempt``, or None when the call must not retry.

    None when ``code`` is not retryable, the wait would reach past the caller's deadline
    (``time_remaining_seconds``), or — only for a caller without a deadline — the attempts are
    used up: a caller who gave a deadline sees latency, not errors, until it passes (a dead
    node's lease takes a few seconds to expire). The server's hint
    wins over the computed backoff.
    """
    if not policy.is_retryable(code):
        return None
    if time_remaining_seconds is None and attempt >= policy.max_attempts:
        return None
    hint_ms = retry_after_hint_ms(trailing_metadata)
    delay_seconds = (hint_ms if hint_ms is not None else policy.backoff_ms(attempt)) / 1000
    if time_remaining_seconds is not None and delay_seconds >= time_remaining_seconds:
        return None
    return delay_seconds


def owner_address(trailing_metadata: MetadataPairs | None) -> str | None:
    """The ``host:port`` part of ``sessionmesh-owner: <node_id>@<host:port>``, if present."""
    for key, value in trailing_metadata or ():
        if key == OWNER_METADATA_KEY:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            _, separator, address = text.partition("@")
            return address if separator and address else None
    return None


def _ignore() -> None:
    return None


class Attempts:
    """Where one call goes next after each failure: the owner a node named, at once the first
    time; otherwise, within the caller's deadline, after a backoff and the watch-fed views again.

    Built only when a call failed (the first attempt needs none of it). ``route`` resolves a
    workspace's address from the views and raises ``MeshError`` when no node can serve it;
    ``time_remaining`` gives the caller's remaining deadline (None: no deadline, then the
    policy's ``max_attempts`` bounds the retries). ``on_retry`` and ``on_reroute`` count.
    """

    def __init__(
        self,
        *,
        workspace_id: str,
        address: str | None,
        route: Callable[[str], str],
        time_remaining: Callable[[], float | None],
        policy: RetryPolicy,
        on_retry: Callable[[], None] = _ignore,
        on_reroute: Callable[[], None] = _ignore,
    ) -> None:
        self.address = address
        self._workspace_id = workspace_id
        self._route = route
        self._time_remaining = time_remaining
        self._policy = policy
        self._on_retry = on_retry
        self._on_reroute = on_reroute
        self._retry_count = 0
        self._refused_addresses: set[str] = set()

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (None: no deadline)."""
        return self._time_remaining()

    async def first_address(self) -> str:
        """Resolve the owner from the views; while none can serve, wait within the deadline.
        Raises the ``MeshError`` of the last try when the wait would pass the deadline."""
        while True:
            try:
                self.address = self._route(self._workspace_id)
                return self.address
            except MeshError:
                if not await self._wait_for_retry(grpc.StatusCode.UNAVAILABLE, None):
                    raise

    async def should_try_again(self, code: grpc.StatusCode, trailing: MetadataPairs) -> bool:
        """Pick the next address (after a wait if needed) if a failure with ``code`` and
        ``trailing`` metadata allows another attempt."""
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return await self._redirect(tuple(trailing))
        if not await self._wait_for_retry(code, trailing):
            return False
        self._on_retry()
        # The slot may have moved or its node died meanwhile: follow the views again, except
        # back to a node that already said it is not the owner.
        with contextlib.suppress(MeshError):
            address = self._route(self._workspace_id)
            if address not in self._refused_addresses:
                self.address = address
        return True

    async def _wait_for_retry(self, code: grpc.StatusCode, trailing: MetadataPairs | None) -> bool:
        self._retry_count += 1
        delay_seconds = next_delay_seconds(
            self._policy,
            attempt=self._retry_count,
            code=code,
            trailing_metadata=trailing,
            time_remaining_seconds=self._time_remaining(),
        )
        if delay_seconds is None:
            return False
        await asyncio.sleep(delay_seconds)
        return True

    async def _redirect(self, trailing: tuple[tuple[str, str | bytes], ...]) -> bool:
        """After ``FAILED_PRECONDITION`` (the node did nothing): go to the owner it named.

        The first redirect to a named owner that has not refused yet is immediate. Otherwise
        (no owner named, or nodes naming each other while a slot moves) wait a backoff and
        follow the views again: views of a moving slot converge within milliseconds. It gives
        up only when the caller's deadline would pass (or, without a deadline, after the
        policy's attempts).
        """
        if self.address is not None:
            self._refused_addresses.add(self.address)
        named = owner_address(trailing)
        if named is not None and named not in self._refused_addresses:
            self._on_reroute()
            self.address = named
            return True
        self._retry_count += 1
        delay_seconds = self._policy.backoff_ms(self._retry_count) / 1000
        time_remaining_seconds = self._time_remaining()
        if (time_remaining_seconds is None and self._retry_count >= self._policy.max_attempts) or (
            time_remaining_seconds is not None and delay_seconds >= time_remaining_seconds
        ):
            _log.warning(
                "redirect_gave_up workspace_id=%s refused_by=%s named=%s",
                self._workspace_id,
                sorted(self._refused_addresses),
                named,
            )
            return False
        await asyncio.sleep(delay_seconds)
        self._on_reroute()
        self._refused_addresses.clear()  # after the wait, every view may have moved on
        with contextlib.suppress(MeshError):
            self.address = self._route(self._workspace_id)
        return True
