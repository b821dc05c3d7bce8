"""Retry policy as data: which codes retry, jittered backoff bounded by the caller's deadline.

Used by the gateway and by the proxyless client. A server hint
(``sessionmesh-retry-after-ms`` in trailing metadata) replaces the computed backoff.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from registry.errors import RETRY_AFTER_METADATA_KEY


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
