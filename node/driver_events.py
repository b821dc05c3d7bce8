"""The queue between a session's driver and the task that handles its events, with a bound.

A driver reports from the event loop and must never wait (a real network client calls back
from its own reader). The session handles events one at a time, and some of them wait for
the disk (a state change writes ``meta.json``), so a burst from the network queues here.
The queue holds at most ``max_events``; when it is full:

- an ``ACK`` or ``INBOUND`` event is **dropped** and counted. Nothing acknowledged is lost
  by that: a message whose ack is dropped stays QUEUED in the outbox and is handed to the
  network again at the next connect, which deduplicates it and acknowledges it again; an
  inbound message only misses the live ``WatchSession`` streams (which already drop a
  watcher that falls behind);
- a ``QR`` event **replaces** the QR event still queued (only the newest code matters);
- a lifecycle event (``PAIRED``, ``READY``, ``DISCONNECTED``, ``FAILED``) takes the place of
  the oldest droppable event queued, so the session's state is never lost to a flood of
  acks; only when the queue holds lifecycle events alone is the newest one dropped (a
  driver that reports thousands of state changes unhandled is broken), with an error log.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from node.drivers.base import DriverEvent, DriverEventKind

DEFAULT_MAX_DRIVER_EVENTS = 4096
"""Events a session may have waiting to be handled before the policy above applies."""

_DROPPABLE = frozenset({DriverEventKind.ACK, DriverEventKind.INBOUND})


class DriverEventQueue:
    """A bounded FIFO of one session's driver events (see the module docstring).

    ``on_dropped(kind)`` is told of every event dropped (for a metric and a log)."""

    def __init__(
        self,
        *,
        max_events: int = DEFAULT_MAX_DRIVER_EVENTS,
        on_dropped: Callable[[DriverEventKind], None] = lambda kind: None,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._max_events = max_events
        self._on_dropped = on_dropped
        self._events: collections.deque[DriverEvent | None] = collections.deque()
        self._ready = asyncio.Event()
        self._is_closed = False

    def __len__(self) -> int:
        return len(self._events)

    def offer(self, event: DriverEvent) -> None:
        """Queue ``event`` without waiting, applying the policy when the queue is full."""
        if self._is_closed:
            return
        if len(self._events) >= self._max_events and not self._make_room(event):
            self._on_dropped(event.kind)
            return
        self._events.append(event)
        self._ready.set()

    def close(self) -> None:
        """Accept nothing more; ``get`` returns None once what is queued is handled."""
        if not self._is_closed:
            self._is_closed = True
            self._events.append(None)
            self._ready.set()

    async def get(self) -> DriverEvent | None:
        """The next event, or None after ``close`` and everything queued before it."""
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    def _make_room(self, event: DriverEvent) -> bool:
        """Free one place for ``event`` if the policy allows; whether it did."""
        if event.kind in _DROPPABLE:
            return False
        if event.kind is DriverEventKind.QR:
            for index, queued in enumerate(self._events):
                if queued is not None and queued.kind is DriverEventKind.QR:
                    del self._events[index]
                    self._on_dropped(DriverEventKind.QR)
                    return True
        for index, queued in enumerate(self._events):
            if queued is not None and queued.kind in _DROPPABLE:
                del self._events[index]
                self._on_dropped(queued.kind)
                return True
        return False
