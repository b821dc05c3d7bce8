"""One hosted session: its state machine, driven by driver events.

::

    STARTING → QR_PENDING → AUTHENTICATED → READY
                  ↑ (QR rotates)               ↓ ↑
                                          DISCONNECTED(reason)
    any → FAILED(error)       any → STOPPED (stop or delete)

Driver events are handled one at a time, in order, by one task: credentials from ``PAIRED``
are on disk before the session says AUTHENTICATED. Its messages go through its
:class:`node.delivery.OutboxDelivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from opentelemetry import trace

from node.delivery import OutboxDelivery, SendResult
from node.driver_events import DriverEventQueue
from node.drivers.base import LOGGED_OUT, Driver, DriverEvent, DriverEventKind
from node.epoch_fence import EpochFence, Fenced
from node.event_journal import EventJournal
from node.events import Broadcaster, EventKind, SessionEvent, Subscription
from node.message_log import told_ahead
from node.session_limits import DEFAULT_LIMITS, QUOTA_RETRY_AFTER_MS, SessionLimits
from node.session_state import STORED_STATES, SessionState, SessionView
from node.storage import CorruptRecord, OutboxEntry, SessionMeta, SessionStorage
from node.storage_errors import StaleWrite
from node.webhooks.hub import WebhookHub
from node.webhooks.payloads import session_key
from registry import CapacityExhausted, MeshError, MessageStatus, Unavailable

_log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

DRIVER_STOP_TIMEOUT_SECONDS = 5.0
WEBHOOK_DRAIN_SECONDS = 2.0
"""How long a deleted session's webhook delivery may take to post its last events."""
EPOCH_CHANGED_RETRY_AFTER_MS = 100
"""Retry hint of a call authorized under another epoch than its session runs under."""


class SessionObserver(Protocol):
    """Who hears about a session's changes besides its watchers (the manager)."""

    def state_changed(
        self, session: HostedSession, previous: SessionState, current: SessionState
    ) -> None:
        """The session moved from ``previous`` to ``current``."""
        ...

    def disconnected(self, session: HostedSession, reason: str, details: str) -> None:
        """The session lost its connection or was deleted."""
        ...

    def activity(self, session: HostedSession) -> None:
        """The session sent or received something."""
        ...

    def limit_reached(self, session: HostedSession, what: str, kind: str) -> None:
        """A bound of the session applied: ``what`` is ``driver_events`` (``kind``: what was
        dropped), or a limit that refused a call (``outbox_quota``, ``watchers``)."""
        ...


class HostedSession:
    """A session running on this node, under the owner epoch of its ``fence``."""

    def __init__(
        self,
        *,
        meta: SessionMeta,
        storage: SessionStorage,
        driver: Driver,
        outbox_entries: list[OutboxEntry],
        credentials: dict[str, Any] | None,
        observer: SessionObserver,
        fence: EpochFence,
        on_fenced: Callable[[HostedSession], None],
        may_write: Callable[[], int],
        limits: SessionLimits = DEFAULT_LIMITS,
        authorized_epoch: int | None = None,
        events: list[SessionEvent] | None = None,
        moved_from: str = "",
        webhooks: WebhookHub | None = None,
    ) -> None:
        self._meta = meta.changed(state=SessionState.STARTING.value)
        self._limits = limits
        self._authorized_epoch = fence.epoch if authorized_epoch is None else authorized_epoch
        """The epoch of the ownership calls for it are authorized under (the slot's or pin's
        key); its files are fenced by ``fence.epoch``, newer after a takeover from a pin."""
        self._fence = fence
        self._on_fenced = on_fenced
        self._fence_reported = False
        self._storage = storage
        self._driver = driver
        self._credentials = credentials
        self._observer = observer
        self._broadcaster = Broadcaster(max_queued_events=limits.max_watcher_lag)
        opened_under = may_write()

        def same_lease() -> bool:  # the lease the session was opened under, still confirmed
            return opened_under != 0 and may_write() == opened_under

        self._journal = EventJournal(
            storage=storage,
            workspace_id=meta.workspace_id,
            session_id=meta.session_id,
            broadcaster=self._broadcaster,
            events=events or [],
            may_write=same_lease,
        )
        self._webhooks = (
            None
            if webhooks is None
            else webhooks.session(
                workspace_id=meta.workspace_id,
                session_id=meta.session_id,
                session_key=session_key(meta.workspace_id, meta.session_id, meta.created_at_unix),
                journal=self._journal,
                may_write=same_lease,
            )
        )
        self._delivery = OutboxDelivery(
            workspace_id=meta.workspace_id,
            session_id=meta.session_id,
            storage=storage,
            driver=driver,
            entries=outbox_entries,
            may_write=may_write,
            span_attributes=self._span_attributes,
            max_queued=limits.outbox_max_queued,
            on_refused=lambda: observer.limit_reached(self, "outbox_quota", "send"),
            on_accepted=self._accepted,
        )
        self._told_ahead = told_ahead(events or [], outbox_entries)
        """Acks already told by a previous owner that the outbox does not hold yet."""
        self._qr_code = ""
        self._qr_expire_at_unix = 0.0
        self._driver_events = DriverEventQueue(
            max_events=limits.max_driver_events,
            on_dropped=lambda kind: observer.limit_reached(self, "driver_events", kind.value),
        )
        self._moved_from = moved_from
        """The node the session ran on before this one opened it (empty: not moved)."""
        self._meta_lock = asyncio.Lock()
        self._event_task: asyncio.Task[None] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._is_stopping = False
        self._accepts_driver_events = True

    @property
    def workspace_id(self) -> str:
        """The workspace the session belongs to."""
        return self._meta.workspace_id

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self._meta.session_id

    @property
    def state(self) -> SessionState:
        """The state now."""
        return SessionState(self._meta.state)

    @property
    def meta(self) -> SessionMeta:
        """The meta as it is now (persisted on every state change)."""
        return self._meta

    def view(self) -> SessionView:
        """The session as the API shows it now."""
        is_pending = self.state is SessionState.QR_PENDING
        return SessionView(
            meta=self._meta,
            qr_code=self._qr_code if is_pending else "",
            qr_expire_at_unix=self._qr_expire_at_unix if is_pending else 0.0,
        )

    @property
    def epoch(self) -> int:
        """The owner epoch this session runs under."""
        return self._fence.epoch

    async def _guard(self) -> None:
        """Raise ``Fenced`` (and tell the manager once) if a newer owner took the session."""
        try:
            await self._fence.check()
        except Fenced:
            if not self._fence_reported:
                self._fence_reported = True
                self._on_fenced(self)
            raise

    def _span_attributes(self) -> dict[str, str]:
        return {
            "sessionmesh.workspace_id": self.workspace_id,
            "sessionmesh.session_id": self.session_id,
            "sessionmesh.node_id": self._meta.node_id,
        }

    def start(self) -> None:
        """Start the driver and the tasks that handle its events (returns at once)."""
        name = f"{self.workspace_id}/{self.session_id}"
        self._event_task = asyncio.create_task(
            self._handle_driver_events(), name=f"session-events-{name}"
        )
        self._delivery.start(lambda: self.state is SessionState.READY)
        if self._webhooks is not None:
            self._webhooks.start()
        self._start_task = asyncio.create_task(self._start_driver(), name=f"session-start-{name}")

    async def wait_started(self) -> None:
        """Return when ``driver.start`` has returned (or failed: the session is then FAILED)."""
        if self._start_task is not None:
            await asyncio.shield(self._start_task)

    async def _start_driver(self) -> None:
        if self._moved_from:  # before the driver starts: the first event of its new owner
            await self._journal.emit(
                SessionEvent(
                    kind=EventKind.SESSION_MOVED,
                    at_unix=time.time(),
                    node_id=self._meta.node_id,
                    previous_node_id=self._moved_from,
                )
            )
        with _tracer.start_as_current_span(
            "driver.start",
            attributes={
                **self._span_attributes(),
                "sessionmesh.restored": self._credentials is not None,
            },
        ):
            try:
                await self._driver.start(self._credentials, self._on_driver_event)
            except Exception as error:
                _log.warning(
                    "driver_start_failed",
                    workspace_id=self.workspace_id,
                    session_id=self.session_id,
                    error=error,
                )
                self._on_driver_event(
                    DriverEvent(kind=DriverEventKind.FAILED, reason=f"driver start: {error}")
                )

    def _on_driver_event(self, event: DriverEvent) -> None:
        # Called by the driver on the loop; handled in order by _handle_driver_events.
        if self._accepts_driver_events:
            self._driver_events.offer(event)

    def subscribe(self) -> Subscription:
        """A subscription to this session's events from now on; ``CapacityExhausted`` when
        the session has as many watchers as it may (``--max-watchers-per-session``)."""
        if self._broadcaster.subscriber_count >= self._limits.max_watchers:
            self._observer.limit_reached(self, "watchers", "watch")
            raise CapacityExhausted(
                f"session {self.workspace_id}/{self.session_id} has "
                f"{self._limits.max_watchers} watchers, as many as it may "
                "(MAX_WATCHERS_PER_SESSION)",
                retry_after_ms=QUOTA_RETRY_AFTER_MS,
            )
        subscription = self._broadcaster.subscribe()
        if self.state is SessionState.STOPPED:
            subscription.close()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Drop a watcher's subscription."""
        self._broadcaster.unsubscribe(subscription)

    @property
    def last_sequence(self) -> int:
        """The sequence of the session's newest event (0: none yet)."""
        return self._journal.last_sequence

    async def events_after(self, sequence: int) -> list[SessionEvent]:
        """Every event after ``sequence`` (from memory or the durable log); ``OutOfRange``
        when they are no longer kept."""
        return await self._journal.after(sequence)

    async def send(
        self, client_message_id: str, to: str, text: str, *, node_id: str, epoch: int
    ) -> SendResult:
        """Accept a message authorized under ``epoch``: on disk in the outbox before this
        returns, deduped by id (a repeated ``client_message_id`` returns the first answer).

        Raises ``Unavailable`` once the session is stopping, or when the call was authorized
        under another ownership than the one the session runs under (it is moving).
        """
        if epoch != self._authorized_epoch:
            raise Unavailable(
                f"session {self.workspace_id}/{self.session_id} runs under epoch "
                f"{self._authorized_epoch}, "
                f"not {epoch}",
                retry_after_ms=EPOCH_CHANGED_RETRY_AFTER_MS,
            )
        result = await self._delivery.accept(client_message_id, to, text, node_id=node_id)
        if not result.is_duplicate:
            self._observer.activity(self)
        return result

    async def request_pairing_code(self, phone_number: str) -> str:
        """The driver's code to pair by ``phone_number`` (the caller checked the session waits
        to be paired: :mod:`node.pairing_codes`); ``Unavailable`` once it is stopping."""
        if self._is_stopping:
            raise Unavailable(
                f"session {self.workspace_id}/{self.session_id} is stopping",
                retry_after_ms=EPOCH_CHANGED_RETRY_AFTER_MS,
            )
        attributes = self._span_attributes()
        with _tracer.start_as_current_span("driver.request_pairing_code", attributes=attributes):
            return await self._driver.request_pairing_code(phone_number)

    async def _message_event(self, entry: OutboxEntry, *, at_unix: float) -> None:
        """The event of a message's status (``message.accepted``, ``.sent``… ``.failed``)."""
        await self._journal.emit(
            SessionEvent(
                kind=EventKind.MESSAGE_ACK,
                at_unix=at_unix,
                message_id=entry.client_message_id,
                status=entry.status,
            )
        )

    async def _accepted(self, entry: OutboxEntry) -> None:
        await self._message_event(entry, at_unix=entry.accepted_at_unix)

    async def stop(self, *, logout: bool, reason: str = "", details: str = "") -> None:
        """Stop the driver, finish handling its events, and persist the final meta.

        With ``logout`` the session is being deleted: it is logged out on the network, marked
        deleted with ``reason``/``details``, and its unsent messages are marked FAILED.
        """
        if self._is_stopping:
            return
        self._is_stopping = True
        delivery_task = self._delivery.close()  # no new accept, no new driver.send from here
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        with (
            _tracer.start_as_current_span(
                "driver.stop", attributes={**self._span_attributes(), "sessionmesh.logout": logout}
            ),
            contextlib.suppress(Exception),
        ):
            async with asyncio.timeout(DRIVER_STOP_TIMEOUT_SECONDS):
                await self._driver.stop(logout=logout)
        # Let the event task finish what the driver reported before it stopped (credentials!).
        self._accepts_driver_events = False
        self._driver_events.close()
        tasks = [self._event_task, delivery_task, self._start_task]
        await asyncio.gather(*(task for task in tasks if task is not None), return_exceptions=True)
        # Accepts already on their way to the disk land before the session is recorded
        # stopped (the driver is down already: a slow disk never keeps it connected): the
        # slot is released after this, and the next owner must find them in the log.
        await self._delivery.settle()
        changes: dict[str, Any] = {}
        if logout:
            changes = {
                "deleted": True,
                "disconnect_reason": reason,
                "disconnect_details": details,
                "disconnected_at_unix": time.time(),
            }
            for failed in await self._delivery.fail_unsent("session deleted"):
                await self._message_event(failed, at_unix=time.time())
        with contextlib.suppress(OSError):  # a full disk: the next owner re-delivers
            await self._delivery.flush()
        await self._set_state(SessionState.STOPPED, reason=reason, **changes)
        if logout:
            self._observer.disconnected(self, reason, details)
        with contextlib.suppress(MeshError, OSError):  # a failing disk: already reported
            await self._journal.close()
        self._broadcaster.close_all()
        if self._webhooks is not None:
            # A deleted session is not restored anywhere: its last events go out now.
            await self._webhooks.stop(drain_seconds=WEBHOOK_DRAIN_SECONDS if logout else 0.0)

    async def _set_state(self, state: SessionState, *, reason: str = "", **changes: Any) -> None:
        previous = self.state
        async with self._meta_lock:
            self._meta = self._meta.changed(
                state=state.value, updated_at_unix=time.time(), **changes
            )
            if state in STORED_STATES:
                try:
                    await self._guard()
                    await self._storage.save_meta(self._meta, fence_epoch=self.epoch)
                except (Fenced, StaleWrite):
                    pass  # the newer owner's meta stays; this state lives in memory only
                except (CorruptRecord, MeshError) as error:  # unreadable meta, failing disk
                    _log.warning(
                        "session_meta_not_written",
                        workspace_id=self.workspace_id,
                        session_id=self.session_id,
                        state=state.value,
                        error=repr(error),
                    )
        if previous is state:
            return
        await self._journal.emit(
            SessionEvent(
                kind=EventKind.STATE_CHANGED,
                at_unix=time.time(),
                state=state.value,
                previous_state=previous.value,
                reason=reason,
            )
        )
        self._observer.state_changed(self, previous, state)

    async def _handle_driver_events(self) -> None:
        while True:
            event = await self._driver_events.get()
            if event is None:
                return
            try:
                await self._handle(event)
            except Exception:
                # One bad event (e.g. a full disk for one ack) must not end the session.
                _log.exception(
                    "driver_event_failed",
                    workspace_id=self.workspace_id,
                    session_id=self.session_id,
                    kind=event.kind.value,
                )

    async def _handle(self, event: DriverEvent) -> None:
        kind = event.kind
        if kind is DriverEventKind.QR:
            self._qr_code, self._qr_expire_at_unix = event.qr_code, event.expire_at_unix
            if self.state is not SessionState.QR_PENDING:
                await self._set_state(SessionState.QR_PENDING)
            await self._journal.emit(
                SessionEvent(
                    kind=EventKind.QR_ROTATED,
                    at_unix=time.time(),
                    qr_code=event.qr_code,
                    qr_expire_at_unix=event.expire_at_unix,
                )
            )
        elif kind is DriverEventKind.PAIRED:
            # Persisted before anything else: a crash after this line restores without a QR.
            await self._guard()
            await self._storage.save_credentials(
                self.workspace_id, self.session_id, event.credentials
            )
            self._credentials = event.credentials
            await self._set_state(SessionState.AUTHENTICATED)
        elif kind is DriverEventKind.READY:
            await self._set_state(SessionState.READY, error="")
            self._delivery.connected()
        elif kind is DriverEventKind.DISCONNECTED:
            if event.reason == LOGGED_OUT and self._credentials is not None:
                # The phone ended the pairing: nobody may connect with these again.
                await self._guard()
                await self._storage.delete_credentials(self.workspace_id, self.session_id)
                self._credentials = None
            await self._set_state(
                SessionState.DISCONNECTED,
                reason=event.reason,
                disconnect_reason=event.reason,
                disconnect_details=event.text,
                disconnected_at_unix=time.time(),
            )
            self._observer.disconnected(self, event.reason, event.text)
        elif kind is DriverEventKind.FAILED:
            await self._set_state(SessionState.FAILED, reason=event.reason, error=event.reason)
        elif kind is DriverEventKind.ACK:
            await self._handle_ack(event)
        elif kind is DriverEventKind.INBOUND:
            await self._journal.emit(
                SessionEvent(
                    kind=EventKind.INBOUND_MESSAGE,
                    at_unix=time.time(),
                    message_id=event.message_id,
                    sender=event.sender,
                    text=event.text,
                )
            )
            self._observer.activity(self)

    async def _handle_ack(self, event: DriverEvent) -> None:
        updated = self._delivery.advanced(event.message_id, event.status)
        if updated is None:
            return
        # The event on disk before the status: after a crash between the two, the next owner
        # hands the message to the network again, hears the ack again, and finds it told.
        progress = MessageStatus(updated.status).progress
        told = self._told_ahead.get(updated.client_message_id)
        if told is None or progress > told.progress:
            await self._message_event(updated, at_unix=time.time())
        if told is not None and progress >= told.progress:
            del self._told_ahead[updated.client_message_id]
        await self._delivery.acknowledged(updated)
