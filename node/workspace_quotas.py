"""Per-workspace quotas on the node that owns the workspace: how many sessions it may have,
and how fast it may send.

All of a workspace's sessions run on one node (its slot's owner, or its pin's), so that node
counts them and meters their sends without asking anyone:

- ``--max-sessions-per-workspace`` (1,000): a ``CreateSession`` of one more is
  ``RESOURCE_EXHAUSTED`` (a session that exists is still answered, idempotently);
- ``--sends-per-second-per-workspace`` (100, bursts of twice that): a token bucket per
  workspace; a send past it is ``RESOURCE_EXHAUSTED`` with the time until the next token as
  its retry hint, and nothing is written. The bucket lives on the owner: after a move the new
  owner starts with a full one.

0 turns either off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_SESSIONS_PER_WORKSPACE = 1000
DEFAULT_SENDS_PER_SECOND_PER_WORKSPACE = 100.0
BURST_SECONDS = 2.0
"""A bucket holds this many seconds of sends: a quiet workspace may send a burst."""
_MAX_IDLE_BUCKETS = 10_000
"""Past this many buckets, full ones (idle workspaces) are forgotten."""


@dataclass(frozen=True)
class WorkspaceQuotas:
    """The quotas of every workspace on this node (0: no quota)."""

    max_sessions: int = DEFAULT_MAX_SESSIONS_PER_WORKSPACE
    sends_per_second: float = DEFAULT_SENDS_PER_SECOND_PER_WORKSPACE


DEFAULT_QUOTAS = WorkspaceQuotas()


class SendRate:
    """A token bucket per workspace: ``rate`` sends a second, up to ``rate * BURST_SECONDS``
    at once."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate * BURST_SECONDS)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """workspace → (tokens, when they were counted)."""

    def take(self, workspace_id: str) -> int:
        """Take a token for one send: 0 if there was one, else the milliseconds until there is
        (nothing taken)."""
        if self._rate <= 0:
            return 0
        now = self._clock()
        tokens, counted_at = self._buckets.get(workspace_id, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - counted_at) * self._rate)
        if tokens < 1.0:
            self._buckets[workspace_id] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self._rate * 1000))
        self._buckets[workspace_id] = (tokens - 1.0, now)
        if len(self._buckets) > _MAX_IDLE_BUCKETS:
            self._forget_full(now)
        return 0

    def _forget_full(self, now: float) -> None:
        refill = self._capacity / self._rate
        self._buckets = {
            workspace: (tokens, at)
            for workspace, (tokens, at) in self._buckets.items()
            if now - at < refill
        }
