"""The one backoff of the mesh: exponential, capped, optionally jittered.

Used for reconnecting watches and leases, the sim driver's reconnects and the routing retry
policy alike, so "how long do we wait after the n-th failure" is answered in one place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays that grow by ``multiplier`` from ``initial_seconds`` up to ``max_seconds``."""

    initial_seconds: float
    """Delay before the first retry, before jitter."""
    max_seconds: float
    """Upper bound of the computed delay, before jitter."""
    multiplier: float = 2.0
    """Growth of the delay per attempt."""
    jitter: float = 0.0
    """Relative spread: the delay is drawn from ``base * (1 ± jitter)``, so retries of many
    callers scatter instead of arriving together."""

    def delay_seconds(self, attempt: int, *, random_unit: float | None = None) -> float:
        """The delay before retry number ``attempt`` (1 = the first retry).

        ``random_unit`` in [0, 1) replaces the random draw (for tests).
        """
        base = min(self.initial_seconds * self.multiplier ** max(attempt - 1, 0), self.max_seconds)
        if not self.jitter:
            return base
        unit = random.random() if random_unit is None else random_unit
        return max(base * (1 + self.jitter * (2 * unit - 1)), 0.0)


class Retries:
    """Counts the failures of one retry loop and hands out the next delay; :meth:`reset` after
    a success (or a healthy stretch), so a new outage starts from the shortest delay."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures counted since the last reset."""
        return self._attempt

    def next_delay_seconds(self) -> float:
        """Count one more failure; the delay to wait before trying again."""
        self._attempt += 1
        return self._backoff.delay_seconds(self._attempt)

    def reset(self) -> None:
        """Start again from the first delay."""
        self._attempt = 0
