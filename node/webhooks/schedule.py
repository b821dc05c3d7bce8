"""When a failed delivery is tried again, and which answers are worth another try.

The schedule is a list of delays, one per retry (``--webhook-retry-schedule``, default
``5s,30s,2m,10m,30m,1h,3h,6h,12h``: ten attempts over about 23 hours); each delay is
jittered by ±20 % so receivers that come back are not hit by every node at once. A ``429`` or
``503`` with ``Retry-After`` waits what the receiver asked (at most the longest delay of the
schedule). A ``2xx`` is delivered; ``408``, ``409``, ``425``, ``429``, any ``5xx``, a redirect,
a timeout or a connection error is retried; any other ``4xx`` is a refusal: the event goes to
the dead-letter list at once.
"""

from __future__ import annotations

import enum
import random
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from registry import InvalidInput

DEFAULT_SCHEDULE_TEXT = "5s,30s,2m,10m,30m,1h,3h,6h,12h"
JITTER = 0.2
MAX_RETRIES = 50
MAX_DELAY_SECONDS = 48 * 3600.0
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DELAY = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")


class Outcome(enum.Enum):
    """What an HTTP answer means for the event."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


def outcome_of(status: int) -> Outcome:
    """The meaning of HTTP ``status`` (0: no answer at all)."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return Outcome.REFUSED
    return Outcome.RETRY


def retry_after_seconds(
    status: int, header: str | None, *, now_unix: float | None = None
) -> float | None:
    """The wait a ``429``/``503`` asks for in ``Retry-After`` (seconds or an HTTP date); None
    for another status, no header or one that does not parse."""
    if status not in _RETRY_AFTER_STATUSES or not header:
        return None
    text = header.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_unix is None else now_unix
    return max(0.0, moment.timestamp() - now)


@dataclass(frozen=True)
class RetrySchedule:
    """The delays before each retry."""

    delays: tuple[float, ...]

    @property
    def attempts(self) -> int:
        """Attempts in all: the first and one per delay."""
        return len(self.delays) + 1

    @property
    def longest(self) -> float:
        """The longest delay (the cap of a Retry-After)."""
        return max(self.delays, default=0.0)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The jittered wait before retry number ``retry`` (0: the first retry)."""
        base = self.delays[min(retry, len(self.delays) - 1)]
        spread = (rng or random).uniform(1 - JITTER, 1 + JITTER)
        return base * spread

    def wait_before(self, retry: int, retry_after: float | None) -> float:
        """How long to wait before retry ``retry``: what the receiver asked, if it did."""
        if retry_after is not None:
            return min(retry_after, self.longest)
        return self.delay(retry)


def parse_schedule(text: str) -> RetrySchedule:
    """``"5s,30s,2m"`` as a schedule (a bare number is seconds; ``ms``, ``s``, ``m``, ``h``);
    ``InvalidInput`` naming the bad part. An empty text: no retries."""
    delays: list[float] = []
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        match = _DELAY.fullmatch(part)
        if match is None:
            raise InvalidInput(
                f"--webhook-retry-schedule: {part[:32]!r} is not a delay like 5s, 2m, 1h"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
        if seconds > MAX_DELAY_SECONDS:
            raise InvalidInput(f"--webhook-retry-schedule: {part!r} is longer than 48h")
        delays.append(seconds)
    if len(delays) > MAX_RETRIES:
        raise InvalidInput(f"--webhook-retry-schedule: at most {MAX_RETRIES} retries")
    return RetrySchedule(tuple(delays))


DEFAULT_SCHEDULE = parse_schedule(DEFAULT_SCHEDULE_TEXT)
