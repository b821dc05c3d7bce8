"""One session's events in order: numbered, written to its durable log before any watcher hears
of them, and the newest kept in memory for watchers that resume.

A watcher that reconnects with ``after_sequence`` (after a gateway restart, a network cut, a
failover) is served the events it missed from memory when they are recent, else from the log
on shared storage — the same log a new owner opened, continuing its numbering — then the live
ones, with no gap and no repeat. Events are numbered and queued for the disk in one step, so
the log's order is the numbering; several may be on their way to the disk at once (a burst of
sends shares one flush), and each is published — to watchers, and to the session's webhook
delivery — only once it and every one before it are on disk, in order.

Each event carries the trace context it was emitted in (``trace_parent``), so the webhook
delivery of, say, a ``message.accepted`` links to the ``SendMessage`` call that caused it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog
from opentelemetry import trace

from node.event_log import MAX_RETAINED_EVENTS
from node.events import Broadcaster, SessionEvent
from node.storage import SessionStorage
from node.storage_errors import LeaseLapsed
from registry import MeshError, OutOfRange

_log = structlog.get_logger(__name__)

RECENT_EVENTS = 256
"""Events kept in memory per session for watchers that resume."""


class EventJournal:
    """The numbered events of one session (see the module docstring)."""

    def __init__(
        self,
        *,
        storage: SessionStorage,
        workspace_id: str,
        session_id: str,
        broadcaster: Broadcaster,
        events: list[SessionEvent],
        may_write: Callable[[], bool],
    ) -> None:
        self._storage = storage
        self._workspace_id = workspace_id
        self._session_id = session_id
        self._broadcaster = broadcaster
        self._may_write = may_write
        self._last_sequence = events[-1].sequence if events else 0
        self._assigned = self._last_sequence
        self._written: dict[int, SessionEvent] = {}
        """Events on disk (or given up on) whose predecessors are not yet: published later."""
        self._in_flight: set[asyncio.Task[None]] = set()
        self._recent: collections.deque[SessionEvent] = collections.deque(
            events[-RECENT_EVENTS:], maxlen=RECENT_EVENTS
        )
        self._appended_since_compaction = len(events)
        self._listeners: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()
        """Held while numbering and queueing an event (no await), and through a compaction
        or the close, which wait for what is on its way first."""

    @property
    def last_sequence(self) -> int:
        """The sequence of the newest published event (0: none yet)."""
        return self._last_sequence

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each event is published."""
        self._listeners.append(callback)

    async def emit(self, event: SessionEvent) -> SessionEvent:
        """Number ``event``, write it to the log, then publish it; the numbered event.

        A write that fails (a failing disk, this node's lease lapsed) is logged and the event
        still reaches the live watchers: the node stops serving then anyway. A caller that
        leaves early does not stop its event from being written and published."""
        async with self._lock:
            numbered = replace(
                event, sequence=self._assigned + 1, trace_parent=_current_trace_parent()
            )
            self._assigned = numbered.sequence
            written: Awaitable[None] | None
            try:
                written = self._storage.queue_event(
                    self._workspace_id, self._session_id, numbered, may_write=self._may_write
                )
            except (MeshError, OSError) as error:  # a full write queue: nothing queued
                self._not_logged(numbered, error)
                written = None
            task = asyncio.ensure_future(self._settle(numbered, written))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        await asyncio.shield(task)
        if self._appended_since_compaction >= 2 * MAX_RETAINED_EVENTS:
            async with self._lock:
                if self._appended_since_compaction >= 2 * MAX_RETAINED_EVENTS:
                    await self._compact()
        return numbered

    def _not_logged(self, event: SessionEvent, error: BaseException) -> None:
        _log.warning(
            "session_event_not_logged",
            workspace_id=self._workspace_id,
            session_id=self._session_id,
            sequence=event.sequence,
            error=repr(error),
        )

    async def _settle(self, event: SessionEvent, written: Awaitable[None] | None) -> None:
        if written is not None:
            try:
                await written
            except LeaseLapsed:
                pass  # this node no longer owns the session: its stop event stays in memory
            except (MeshError, OSError) as error:
                self._not_logged(event, error)
        self._written[event.sequence] = event
        while (ready := self._written.pop(self._last_sequence + 1, None)) is not None:
            self._publish(ready)

    def _publish(self, event: SessionEvent) -> None:
        self._last_sequence = event.sequence
        self._recent.append(event)
        self._appended_since_compaction += 1
        self._broadcaster.publish(event)
        for listener in self._listeners:
            listener()

    async def _settled(self) -> None:
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _compact(self) -> None:
        await self._settled()
        try:
            kept = await self._storage.open_events(
                self._workspace_id, self._session_id, may_write=self._may_write
            )
        except (MeshError, OSError) as error:
            _log.warning(
                "session_events_not_compacted",
                workspace_id=self._workspace_id,
                session_id=self._session_id,
                error=repr(error),
            )
            return
        self._appended_since_compaction = len(kept)

    def recent_after(self, sequence: int) -> list[SessionEvent] | None:
        """The published events after ``sequence`` if memory still holds them all, else None
        (read them with :meth:`after`)."""
        if sequence >= self._last_sequence:
            return []
        recent = self._recent
        if recent and recent[0].sequence <= sequence + 1:
            return [event for event in recent if event.sequence > sequence]
        return None

    async def after(self, sequence: int) -> list[SessionEvent]:
        """Every event after ``sequence``, in order; ``OutOfRange`` when the log no longer
        holds the one right after it (compacted away: watch again from the start)."""
        missed = await self.available_after(sequence)
        if missed and missed[0].sequence != sequence + 1:
            raise OutOfRange(
                f"events after {sequence} of {self._workspace_id}/{self._session_id} are no "
                "longer kept: watch again without after_sequence"
            )
        return missed

    async def available_after(self, sequence: int) -> list[SessionEvent]:
        """The published events after ``sequence`` that are still kept (from memory or the
        log), in order: they start later than ``sequence + 1`` when older ones were compacted
        away."""
        recent = self.recent_after(sequence)
        if recent is not None:
            return recent
        logged = await self._storage.load_events(self._workspace_id, self._session_id)
        return [e for e in logged if sequence < e.sequence <= self._last_sequence]

    async def close(self) -> None:
        """Close the log (the session stops), once what is on its way is written."""
        async with self._lock:
            await self._settled()
            await self._storage.close_events(self._workspace_id, self._session_id)


def _current_trace_parent() -> str:
    """The W3C ``traceparent`` of the span running now; empty outside any."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
