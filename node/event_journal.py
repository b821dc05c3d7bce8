"""One session's events in order: numbered, written to its durable log before any watcher hears
of them, and the newest kept in memory for watchers that resume.

A watcher that reconnects with ``after_sequence`` (after a gateway restart, a network cut, a
failover) is served the events it missed from memory when they are recent, else from the log
on shared storage — the same log a new owner opened, continuing its numbering — then the live
ones, with no gap and no repeat. Appends are serialized per session (one at a time, each on
disk before the next is numbered), so the log's order is the order watchers see.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import replace

import structlog

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
        self._recent: collections.deque[SessionEvent] = collections.deque(
            events[-RECENT_EVENTS:], maxlen=RECENT_EVENTS
        )
        self._appended_since_compaction = len(events)
        self._lock = asyncio.Lock()

    @property
    def last_sequence(self) -> int:
        """The sequence of the newest event (0: none yet)."""
        return self._last_sequence

    async def emit(self, event: SessionEvent) -> SessionEvent:
        """Number ``event``, write it to the log, then tell the watchers; the numbered event.

        A write that fails (a failing disk, this node's lease lapsed) is logged and the event
        still reaches the live watchers: the node stops serving then anyway."""
        async with self._lock:
            numbered = replace(event, sequence=self._last_sequence + 1)
            try:
                await self._storage.append_event(
                    self._workspace_id, self._session_id, numbered, may_write=self._may_write
                )
            except LeaseLapsed:
                pass  # this node no longer owns the session: its stop event stays in memory
            except (MeshError, OSError) as error:
                _log.warning(
                    "session_event_not_logged",
                    workspace_id=self._workspace_id,
                    session_id=self._session_id,
                    sequence=numbered.sequence,
                    error=repr(error),
                )
            self._last_sequence = numbered.sequence
            self._recent.append(numbered)
            self._broadcaster.publish(numbered)
            self._appended_since_compaction += 1
            if self._appended_since_compaction >= 2 * MAX_RETAINED_EVENTS:
                await self._compact()
        return numbered

    async def _compact(self) -> None:
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

    async def after(self, sequence: int) -> list[SessionEvent]:
        """Every event after ``sequence``, in order; ``OutOfRange`` when the log no longer
        holds the one right after it (compacted away: watch again from the start)."""
        if sequence >= self._last_sequence:
            return []
        recent = list(self._recent)
        if recent and recent[0].sequence <= sequence + 1:
            return [event for event in recent if event.sequence > sequence]
        logged = await self._storage.load_events(self._workspace_id, self._session_id)
        missed = [event for event in logged if event.sequence > sequence]
        if not missed or missed[0].sequence != sequence + 1:
            raise OutOfRange(
                f"events after {sequence} of {self._workspace_id}/{self._session_id} are no "
                "longer kept: watch again without after_sequence"
            )
        return missed

    async def close(self) -> None:
        """Close the log (the session stops)."""
        async with self._lock:
            await self._storage.close_events(self._workspace_id, self._session_id)
