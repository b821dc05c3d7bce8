"""What a hosted session tells its watchers, and the bounded fan-out that carries it.

Each watcher has its own queue with a limit: a slow watcher never blocks the session. One
that falls behind by more than the limit is dropped; its stream ends with ``Unavailable``
so the caller knows to watch again (and gets a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

from registry import Unavailable

DEFAULT_MAX_QUEUED_EVENTS = 1024
"""Events a watcher may lag behind before it is dropped."""


class EventKind(enum.Enum):
    """What happened to a session."""

    STATE_CHANGED = "state_changed"
    QR_ROTATED = "qr_rotated"
    MESSAGE_ACK = "message_ack"
    INBOUND_MESSAGE = "inbound_message"
    SESSION_MOVED = "session_moved"


@dataclass(frozen=True)
class SessionEvent:
    """One thing that happened to a session, as watchers see it."""

    kind: EventKind
    at_unix: float
    state: str = ""
    """STATE_CHANGED: the new state (lower case)."""
    previous_state: str = ""
    reason: str = ""
    qr_code: str = ""
    qr_expire_at_unix: float = 0.0
    message_id: str = ""
    """MESSAGE_ACK: the client_message_id; INBOUND_MESSAGE: the network's id."""
    status: str = ""
    """MESSAGE_ACK: ``QUEUED`` (accepted into the outbox), ``SENT``, ``DELIVERED``, ``READ``
    or ``FAILED``."""
    sender: str = ""
    text: str = ""
    node_id: str = ""
    """SESSION_MOVED: the node it runs on now."""
    previous_node_id: str = ""
    """SESSION_MOVED: the node it ran on before."""
    sequence: int = 0
    """Its place in the session's durable event log (:mod:`node.event_log`); 0 before it
    was written there."""
    trace_parent: str = ""
    """The W3C ``traceparent`` of the span it was emitted in (empty: none), so its webhook
    deliveries link to the call that caused it."""


class _End(enum.Enum):
    CLOSED = "closed"
    OVERFLOWED = "overflowed"


class Subscription:
    """One watcher's queue; iterate it to receive events until the session closes it."""

    def __init__(self, *, max_queued_events: int) -> None:
        self._max_queued_events = max_queued_events
        # Unbounded underneath so the end markers always fit; the limit is checked by hand.
        self._queue: asyncio.Queue[SessionEvent | _End] = asyncio.Queue()
        self._is_open = True

    @property
    def is_open(self) -> bool:
        """Whether events still reach this watcher."""
        return self._is_open

    def offer(self, event: SessionEvent) -> None:
        """Queue ``event``; if the watcher lags too far, drop it instead."""
        if not self._is_open:
            return
        if self._queue.qsize() >= self._max_queued_events:
            self._end(_End.OVERFLOWED)
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        """End the stream cleanly after the events already queued."""
        if self._is_open:
            self._end(_End.CLOSED)

    def _end(self, marker: _End) -> None:
        self._is_open = False
        if marker is _End.OVERFLOWED:
            # What is queued is stale anyway; tell the watcher at once.
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(marker)

    async def events(self) -> AsyncIterator[SessionEvent]:
        """The events in order; raises ``Unavailable`` if the watcher fell behind."""
        while True:
            item = await self._queue.get()
            if item is _End.CLOSED:
                return
            if item is _End.OVERFLOWED:
                raise Unavailable("the watcher fell behind and was dropped; watch again")
            assert isinstance(item, SessionEvent)
            yield item


class Broadcaster:
    """Fans events out to every open subscription of one session."""

    def __init__(self, *, max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS) -> None:
        self._max_queued_events = max_queued_events
        self._subscriptions: set[Subscription] = set()

    @property
    def subscriber_count(self) -> int:
        """Open subscriptions now."""
        return len(self._subscriptions)

    def subscribe(self) -> Subscription:
        """A new subscription that receives every event published from now on."""
        subscription = Subscription(max_queued_events=self._max_queued_events)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription`` (its watcher went away)."""
        self._subscriptions.discard(subscription)
        subscription.close()

    def publish(self, event: SessionEvent) -> None:
        """Offer ``event`` to every subscription; never waits."""
        for subscription in list(self._subscriptions):
            subscription.offer(event)
            if not subscription.is_open:
                self._subscriptions.discard(subscription)

    def close_all(self) -> None:
        """End every stream cleanly."""
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()
