"""One session's durable outbox and its delivery to the network.

A message is appended to the session's message log, and on disk, before ``accept`` returns
(an acknowledged send is durable), deduplicated by ``client_message_id``. One delivery task
hands queued messages to the driver in ``seq`` order whenever the session is READY — again
after every reconnect: the network dedupes by id. Acks only move a message forward; their
statuses are appended without waiting for the disk (a lost one only means the message is
handed to the network again, which dedupes it). Every write first asks ``may_write()`` — the
node's lease is confirmed — so a node that may have lost the session writes nothing. The log
is compacted once it holds as many records again as messages, so it never grows by more than
what the messages themselves need; a compaction forgets settled messages accepted more than
``message_log.DEDUPE_WINDOW_SECONDS`` ago.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from opentelemetry import trace

from node.drivers.base import Driver
from node.message_log import retained, settled_form
from node.outbox import Outbox
from node.session_limits import DEFAULT_OUTBOX_MAX_QUEUED, QUOTA_RETRY_AFTER_MS
from node.storage import FileTicket, OutboxEntry, SessionStorage
from node.storage_errors import LeaseLapsed, StorageStalled
from registry import CapacityExhausted, MessageStatus, Unavailable

_log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

STOPPING_RETRY_AFTER_MS = 200
"""Retry hint of a send to a session that is stopping (it restarts elsewhere)."""
NO_LEASE_RETRY_AFTER_MS = 200
"""Retry hint of a send while the node's lease is not confirmed."""
COMPACT_AFTER_RECORDS = 256
"""A log is compacted once it has this many records (or as many as messages) since the last."""


@dataclass(frozen=True)
class SendResult:
    """The answer to ``accept``: the outbox entry, and whether it was a replay."""

    entry: OutboxEntry
    is_duplicate: bool


class OutboxDelivery:
    """Accepts, delivers and acknowledges one session's messages (see the module docstring)."""

    def __init__(
        self,
        *,
        workspace_id: str,
        session_id: str,
        storage: SessionStorage,
        driver: Driver,
        entries: list[OutboxEntry],
        may_write: Callable[[], int],
        span_attributes: Callable[[], dict[str, str]],
        max_queued: int = DEFAULT_OUTBOX_MAX_QUEUED,
        on_refused: Callable[[], None] = lambda: None,
        on_accepted: Callable[[OutboxEntry], Awaitable[object]] | None = None,
    ) -> None:
        self._max_queued = max_queued
        self._on_accepted = on_accepted
        """Told of each accepted message before it is acknowledged or handed to the driver
        (the session's ``message.accepted`` event: logged before any ack of it)."""
        self._on_refused = on_refused
        self._workspace_id = workspace_id
        self._session_id = session_id
        self._storage = storage
        self._driver = driver
        self._outbox = Outbox(entries)
        self._may_write = may_write
        self._records_since_compaction = 0
        self._span_attributes = span_attributes
        self._send_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[OutboxEntry]] = {}
        """Accepts on their way to the disk, by client_message_id."""
        self._handed_to_driver: set[str] = set()
        self._wanted = asyncio.Event()
        self._is_closed = False
        self._task: asyncio.Task[None] | None = None

    def start(self, is_ready: Callable[[], bool]) -> None:
        """Start delivering whenever ``is_ready()`` (the session is READY) after a wake-up."""
        self._task = asyncio.create_task(
            self._deliver(is_ready),
            name=f"session-delivery-{self._workspace_id}/{self._session_id}",
        )

    def close(self) -> asyncio.Task[None] | None:
        """Accept nothing more and hand nothing more to the driver; the delivery task (ending)."""
        self._is_closed = True
        if self._task is not None:
            self._task.cancel()
        return self._task

    async def flush(self) -> None:
        """Make every status appended so far durable and close the log (the session stops)."""
        await self._storage.close_messages(self._workspace_id, self._session_id)

    def connected(self) -> None:
        """The session is READY (again): deliver everything still queued, from the start."""
        self._handed_to_driver.clear()
        self._wanted.set()

    async def accept(
        self, client_message_id: str, to: str, text: str, *, node_id: str
    ) -> SendResult:
        """Accept a message: on disk in the outbox before this returns, deduped by id.

        A repeated ``client_message_id`` returns the first answer and sends nothing — also
        while the first is still on its way to the disk. Once a message is handed to the
        disk its commit runs to the end even if the caller leaves (a deadline that passes
        during a slow flush): it is then accepted, delivered once, and a retry with the same
        id says so; its ``seq`` is never handed out again. Raises ``Unavailable`` once the
        session is stopping, or when this node may no longer write for it (its lease is not
        confirmed) — also when that turns out only after the write, in which case the record
        is withdrawn behind it, so no later reader delivers it and a retry is accepted anew.
        Raises ``CapacityExhausted`` when the session already holds its quota of messages the
        network has not acknowledged (nothing is written).
        """
        async with self._send_lock:
            existing = self._outbox.get(client_message_id)
            if existing is not None:
                return SendResult(entry=existing, is_duplicate=True)
            pending = self._pending.get(client_message_id)
            is_duplicate = pending is not None
            if pending is None:
                if self._is_closed:
                    raise Unavailable(
                        "the session is stopping", retry_after_ms=STOPPING_RETRY_AFTER_MS
                    )
                waiting = self._outbox.queued_count + len(self._pending)
                if waiting >= self._max_queued:
                    self._on_refused()
                    raise CapacityExhausted(
                        f"session {self._workspace_id}/{self._session_id} has {waiting} "
                        f"messages the network has not acknowledged yet, its quota "
                        f"(OUTBOX_MAX_QUEUED); send again once they are delivered",
                        retry_after_ms=QUOTA_RETRY_AFTER_MS,
                    )
                lease = self._may_write()
                if not lease:  # the new owner would not see it: accept nothing
                    raise Unavailable(
                        "this node's lease is not confirmed",
                        retry_after_ms=NO_LEASE_RETRY_AFTER_MS,
                    )
                entry = OutboxEntry(
                    client_message_id=client_message_id,
                    to=to,
                    text=text,
                    status=MessageStatus.QUEUED,
                    accepted_at_unix=time.time(),
                    seq=self._outbox.reserve_seq(),
                    accepted_by_node_id=node_id,
                )
                pending = asyncio.ensure_future(self._commit(entry, lease))
                self._pending[client_message_id] = pending
        # Shielded: a caller that leaves must not stop a commit the disk may already hold.
        return SendResult(entry=await asyncio.shield(pending), is_duplicate=is_duplicate)

    async def _commit(self, entry: OutboxEntry, lease: int) -> OutboxEntry:
        """Write ``entry`` durably under ``lease``, then take it into the outbox (see
        :meth:`accept`): refused unless the node still holds that same lease, confirmed, both
        just before the write (in the worker thread) and once the record is on disk."""
        message_id = entry.client_message_id

        def same_lease() -> bool:
            return self._may_write() == lease

        ticket = FileTicket()
        try:
            try:
                await self._storage.append_accepted(
                    self._workspace_id, self._session_id, entry, may_write=same_lease, ticket=ticket
                )
            except StorageStalled:
                self._withdraw(entry, ticket)  # it may land after all, later
                raise
            if not same_lease():
                self._withdraw(entry, ticket)
                raise Unavailable(
                    "this node's lease lapsed while the message was written",
                    retry_after_ms=NO_LEASE_RETRY_AFTER_MS,
                )
            self._outbox.put(entry)
            self._records_since_compaction += 1
            if self._on_accepted is not None:
                await self._on_accepted(entry)
            self._wanted.set()
            return entry
        finally:
            self._pending.pop(message_id, None)

    def _withdraw(self, entry: OutboxEntry, ticket: FileTicket) -> None:
        """Withdraw a record that may be on disk but was not acknowledged: no reader of that
        file delivers it, and a retry is accepted anew (see :mod:`node.message_log`)."""
        self._storage.withdraw_accepted(self._workspace_id, self._session_id, entry, ticket)

    async def settle(self) -> None:
        """Wait for every accept on its way to the disk (before the session stops and its
        slot is released: the next owner reads the log after that, and must find them)."""
        if self._pending:
            await asyncio.gather(*self._pending.values(), return_exceptions=True)

    def advanced(self, message_id: str, status: str) -> OutboxEntry | None:
        """What an ack of ``message_id`` with ``status`` makes of its entry (nothing written
        yet: see :meth:`acknowledged`), or None when that is not a step forward."""
        return self._outbox.advanced(message_id, status)

    async def acknowledged(self, updated: OutboxEntry) -> None:
        """Record ``updated`` (from :meth:`advanced`): the ack's status, in memory and on disk.

        The caller logs the ack's event first: a status on disk whose event is not would
        never be told (the next owner finds the message settled and hands it to no one)."""
        if self._outbox.advanced(updated.client_message_id, updated.status) is None:
            return
        # In memory first: a compaction that starts meanwhile carries the new status.
        self._outbox.put(settled_form(updated))
        if self._may_write():
            self._storage.append_status(
                self._workspace_id, self._session_id, updated.client_message_id, updated.status
            )
            self._records_since_compaction += 1
            await self._compact_if_due()

    async def _compact_if_due(self) -> None:
        if self._records_since_compaction < max(COMPACT_AFTER_RECORDS, len(self._outbox)):
            return
        async with self._send_lock:
            await self.settle()  # no accept in flight: the snapshot holds every one
            lease = self._may_write()
            if not lease:
                return  # the session may run elsewhere: its log is no longer ours to rewrite
            self._records_since_compaction = 0
            kept = retained(self._outbox.entries(), now_unix=time.time())
            self._outbox.keep_only(kept)
            try:
                await self._storage.rewrite_messages(
                    self._workspace_id,
                    self._session_id,
                    kept,
                    may_write=lambda: self._may_write() == lease,
                )
            except LeaseLapsed:
                _log.info(
                    "outbox_compaction_skipped",
                    workspace_id=self._workspace_id,
                    session_id=self._session_id,
                    reason="lease lapsed",
                )

    async def fail_unsent(self, reason: str) -> list[OutboxEntry]:
        """Mark every message not yet acknowledged FAILED (the session is being deleted);
        the entries so marked."""
        failed_entries: list[OutboxEntry] = []
        async with self._send_lock:
            await self.settle()  # a send that passed its check lands first
            unsent = self._outbox.queued()
            for entry in unsent:
                failed = self._outbox.advanced(entry.client_message_id, MessageStatus.FAILED)
                if failed is not None and self._may_write():
                    failed_entries.append(failed)
                    self._outbox.put(settled_form(failed))
                    self._storage.append_status(
                        self._workspace_id,
                        self._session_id,
                        failed.client_message_id,
                        MessageStatus.FAILED,
                    )
        if unsent:
            _log.info(
                "outbox_unsent_failed",
                workspace_id=self._workspace_id,
                session_id=self._session_id,
                count=len(unsent),
                reason=reason,
            )
        return failed_entries

    def _next_to_deliver(self) -> OutboxEntry | None:
        for entry in self._outbox.queued():
            if entry.client_message_id not in self._handed_to_driver:
                return entry
        return None

    async def _deliver(self, is_ready: Callable[[], bool]) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while is_ready():
                entry = self._next_to_deliver()
                if entry is None:
                    break
                try:
                    with _tracer.start_as_current_span(
                        "driver.send",
                        attributes={
                            **self._span_attributes(),
                            "sessionmesh.client_message_id": entry.client_message_id,
                        },
                    ):
                        await self._driver.send(entry.client_message_id, entry.to, entry.text)
                except Exception as error:
                    # Not connected after all: the next READY tries again.
                    _log.info(
                        "driver_send_deferred",
                        workspace_id=self._workspace_id,
                        session_id=self._session_id,
                        error=error,
                    )
                    break
                self._handed_to_driver.add(entry.client_message_id)
