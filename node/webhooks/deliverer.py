"""One session's webhook delivery: a task that follows the session's event journal from its
cursor and posts each event to the workspace's endpoint, one at a time and in order (one in
flight per session and endpoint), through :meth:`node.webhooks.hub.WebhookHub.deliver`.

The cursor — the last event settled (delivered, dead-lettered, or not wanted by any
endpoint) — is kept in the session's folder and saved at most every ``SAVE_EVERY_SECONDS``
while events are delivered (not for events nobody wanted: a mesh without webhooks writes no
cursor but at the stop), and when the session stops, before its slot is released: the
next owner, after a handoff or a failover, continues from it. A cursor saved late only means
a few events are posted again, with the same ``webhook-id``: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from node.event_journal import EventJournal
from node.events import SessionEvent
from node.storage import WEBHOOK_CURSOR
from node.webhooks.dead_letters import cursor_record, parse_cursor
from node.webhooks.payloads import body, event_id, webhook_type
from registry import MeshError

if TYPE_CHECKING:
    from node.webhooks.hub import WebhookHub

_log = structlog.get_logger(__name__)

SAVE_EVERY_SECONDS = 1.0
"""How often the cursor is saved while events are delivered."""
RETRY_READ_SECONDS = 1.0
"""The pause after the event log could not be read (a failing disk), before trying again."""


class SessionWebhooks:
    """The webhook delivery of one hosted session (see the module docstring)."""

    def __init__(
        self,
        hub: WebhookHub,
        *,
        workspace_id: str,
        session_id: str,
        session_key: str,
        journal: EventJournal,
        may_write: Callable[[], bool],
    ) -> None:
        self._hub = hub
        self._workspace_id = workspace_id
        self._session_id = session_id
        self._session_key = session_key
        self._journal = journal
        self._may_write = may_write
        self._cursor = 0
        self._saved_cursor = 0
        self._saved_at = time.monotonic()
        self._wake = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._loaded = False
        self._has_settled = False
        """Whether an event was delivered or dead-lettered since the last save."""
        self._task: asyncio.Task[None] | None = None
        self.pending_since_unix: float | None = None
        """When the event being delivered now was emitted (None: none is)."""
        journal.listen(self._wake.set)

    def start(self) -> None:
        """Start following the journal."""
        self._task = asyncio.create_task(
            self._run(), name=f"webhooks-{self._workspace_id}/{self._session_id}"
        )

    async def stop(self, *, drain_seconds: float = 0.0) -> None:
        """Stop delivering — after up to ``drain_seconds`` to catch up (a deleted session:
        nobody delivers its last events later) — and save the cursor."""
        if self._task is None:
            return
        if drain_seconds > 0 and not self._task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_seconds):
                    while self._journal.last_sequence > self._cursor or not self._loaded:
                        self._caught_up.clear()
                        await self._caught_up.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._task = None
        self.pending_since_unix = None
        self._hub.forget(self)
        await self._save(force=True)

    async def _run(self) -> None:
        try:
            data = await self._hub.storage.read_webhook_file(
                self._workspace_id, self._session_id, WEBHOOK_CURSOR
            )
        except (MeshError, OSError) as error:
            _log.warning(
                "webhook_cursor_unreadable",
                workspace_id=self._workspace_id,
                session_id=self._session_id,
                error=repr(error),
            )
            data = b""
        self._cursor = self._saved_cursor = parse_cursor(data)
        self._loaded = True
        while True:
            try:
                await self._step()
            except (MeshError, OSError) as error:  # the log unreadable for now: try again
                _log.warning(
                    "webhook_delivery_paused",
                    workspace_id=self._workspace_id,
                    session_id=self._session_id,
                    error=repr(error),
                )
                await asyncio.sleep(RETRY_READ_SECONDS)

    async def _step(self) -> None:
        """Wait for events past the cursor, then settle them in order."""
        if self._journal.last_sequence <= self._cursor:
            self._caught_up.set()
            await self._save(force=False)
            self._wake.clear()
            if self._journal.last_sequence <= self._cursor:
                await self._wake.wait()
            return
        if self._hub.endpoint(self._workspace_id) is None:
            self._cursor = self._journal.last_sequence  # nobody to tell: they go past
            return
        events = await self._journal.available_after(self._cursor)
        if events and events[0].sequence > self._cursor + 1:
            _log.warning(
                "webhook_events_compacted_before_delivery",
                workspace_id=self._workspace_id,
                session_id=self._session_id,
                first_kept=events[0].sequence,
                cursor=self._cursor,
            )
        for event in events:
            await self._deliver(event)
            self._cursor = event.sequence
            self._has_settled = True
            await self._save(force=False)
        if not events:
            self._cursor = self._journal.last_sequence

    async def _deliver(self, event: SessionEvent) -> None:
        event_type = webhook_type(event)
        if event_type is None:
            return
        self.pending_since_unix = event.at_unix
        try:
            await self._hub.deliver(
                workspace_id=self._workspace_id,
                session_id=self._session_id,
                event_id=event_id(self._session_key, event.sequence),
                event_type=event_type,
                sequence=event.sequence,
                event_at_unix=event.at_unix,
                trace_parent=event.trace_parent,
                body=body(
                    event,
                    event_type=event_type,
                    workspace_id=self._workspace_id,
                    session_id=self._session_id,
                ),
                may_write=self._may_write,
            )
        finally:
            self.pending_since_unix = None

    async def _save(self, *, force: bool) -> None:
        if self._cursor == self._saved_cursor or not self._loaded:
            return
        if not force and (
            not self._has_settled or time.monotonic() - self._saved_at < SAVE_EVERY_SECONDS
        ):
            return  # only events nobody wanted went past: saved when the session stops
        cursor = self._cursor
        try:
            await self._hub.storage.write_webhook_file(
                self._workspace_id,
                self._session_id,
                WEBHOOK_CURSOR,
                cursor_record(cursor),
                may_write=self._may_write,
            )
        except (MeshError, OSError) as error:
            _log.info(
                "webhook_cursor_not_saved",
                workspace_id=self._workspace_id,
                session_id=self._session_id,
                error=repr(error),
            )
            return
        self._saved_cursor = cursor
        self._saved_at = time.monotonic()
        self._has_settled = False
