"""What one hosted session may hold in memory, and what happens past it.

==============================  ==========================================================
queue                           when full
==============================  ==========================================================
outbox: messages not yet        ``SendMessage`` answers ``RESOURCE_EXHAUSTED`` (the quota,
acknowledged by the network     ``--outbox-max-queued``); nothing is written. Delivered
                                messages leave the count at once and the log at its next
                                compaction.
watchers (``WatchSession``)     one more answers ``RESOURCE_EXHAUSTED``
                                (``--max-watchers-per-session``)
one watcher's events            that watcher's stream ends with ``UNAVAILABLE`` (watch
                                again: a fresh snapshot); the others go on
driver events                   acks and inbound messages dropped and counted, QR codes
                                coalesced, state changes kept (:mod:`node.driver_events`)
==============================  ==========================================================

The node-wide queues have bounds of their own: the storage writes
(:mod:`node.group_commit`), the accounts DB changes (``--accounts-max-pending-sessions``),
calls in flight (``--max-in-flight``).
"""

from __future__ import annotations

from dataclasses import dataclass

from node.driver_events import DEFAULT_MAX_DRIVER_EVENTS
from node.events import DEFAULT_MAX_QUEUED_EVENTS

DEFAULT_OUTBOX_MAX_QUEUED = 10_000
"""Messages a session may hold that the network has not acknowledged yet."""
DEFAULT_MAX_WATCHERS_PER_SESSION = 64
"""Open ``WatchSession`` streams per session."""
QUOTA_RETRY_AFTER_MS = 1_000
"""Retry hint of a send refused by the outbox quota (it frees as the network acknowledges)."""


@dataclass(frozen=True)
class SessionLimits:
    """The bounds of one hosted session (see the module docstring)."""

    outbox_max_queued: int = DEFAULT_OUTBOX_MAX_QUEUED
    max_watchers: int = DEFAULT_MAX_WATCHERS_PER_SESSION
    max_driver_events: int = DEFAULT_MAX_DRIVER_EVENTS
    max_watcher_lag: int = DEFAULT_MAX_QUEUED_EVENTS
    """Events one watcher may fall behind before it is dropped."""


DEFAULT_LIMITS = SessionLimits()
"""The limits when none are configured."""
