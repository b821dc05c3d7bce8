"""The session operations of one node: create, look up, list, delete, send, watch — and the
stops that handoffs, fences and shutdown ask for.

Semantics the API relies on:

- ``create`` is idempotent on session_id: the same id returns the session as it is (labels
  of the first create are kept); a different, non-empty phone number is ``AlreadyExists``.
  A session stored by another node and not deleted is adopted: restored from its stored
  credentials, without a QR. A deleted one is created afresh (a new QR).
- ``delete`` is idempotent: it stops the session, logs it out, forgets its credentials and
  marks its meta deleted with the reason; the folder stays as a record. Deleting a deleted
  session returns it as STOPPED with the first reason; deleting an unknown one returns a
  STOPPED session with the given reason and writes nothing (as the API contract says).
- ``request_pairing_code`` asks the session's driver for a code that pairs it by phone number,
  only while it waits to be paired (:mod:`node.pairing_codes`).
- ``get`` of a deleted session returns it STOPPED (from storage); of a session this node does
  not host, ``NotFound``. ``list`` shows the sessions this node hosts.

Every operation on a workspace's sessions takes the epoch its call was authorized under.
The accounts DB hears about every change through ``AccountStore.record_*``, which only queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

from node.budget import WorkBudget
from node.delivery import SendResult
from node.drivers.base import DriverFactory
from node.events import Subscription
from node.metrics import NodeMetrics
from node.page_tokens import decode_page_token, encode_page_token
from node.pairing_codes import check_pairable
from node.quarantine_book import QuarantineBook
from node.reporting import SessionReporter
from node.restore import RestorePipeline
from node.session import HostedSession
from node.session_factory import SessionFactory
from node.session_limits import DEFAULT_LIMITS, SessionLimits
from node.session_state import SessionState, SessionView
from node.session_table import SessionTable
from node.storage import CorruptRecord, SessionMeta, SessionStorage
from node.storage_errors import StaleWrite
from node.webhooks.hub import WebhookHub
from node.workspace_quotas import DEFAULT_QUOTAS, SendRate, WorkspaceQuotas
from registry import (
    AlreadyExists,
    CapacityExhausted,
    InvalidInput,
    NotFound,
    Quarantined,
    Unavailable,
)
from registry.accounts import AccountStore

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
STOPPING_RETRY_AFTER_MS = 200
"""The retry hint while this node shuts down: the gateway re-routes meanwhile."""
STALE_DELETE_RETRY_AFTER_MS = 100
"""Retry hint of a delete refused because a newer owner took the session meanwhile."""


class SessionManager:
    """Owns every session hosted by this node."""

    def __init__(
        self,
        *,
        node_id: str,
        node_address: str,
        storage: SessionStorage,
        driver_factory: DriverFactory,
        max_sessions: int,
        metrics: NodeMetrics,
        admits: Callable[[str], bool],
        budget: WorkBudget,
        may_write: Callable[[], int],
        is_node_gone: Callable[[str], Awaitable[bool]],
        quarantine: QuarantineBook,
        restore_concurrency: int = 32,
        accounts: AccountStore | None = None,
        limits: SessionLimits = DEFAULT_LIMITS,
        quotas: WorkspaceQuotas = DEFAULT_QUOTAS,
        webhooks: WebhookHub | None = None,
    ) -> None:
        self._quotas = quotas
        self._send_rate = SendRate(quotas.sends_per_second)
        self._node_id = node_id
        self._storage = storage
        self._metrics = metrics
        self._admits = admits
        """Whether the node serves a workspace right now: checked right before a created
        session joins, after every await (a handoff may have begun meanwhile)."""
        self._reporter = SessionReporter(
            node_id=node_id,
            node_address=node_address,
            storage=storage,
            metrics=metrics,
            accounts=accounts,
        )
        self._table = SessionTable(node_id=node_id, max_sessions=max_sessions, metrics=metrics)
        self._factory = SessionFactory(
            node_id=node_id,
            storage=storage,
            driver_factory=driver_factory,
            observer=self._reporter,
            on_fenced=self._on_fenced,
            may_write=may_write,
            limits=limits,
            webhooks=webhooks,
        )
        self._is_stopping = False
        self._restores = RestorePipeline(
            node_id=node_id,
            storage=storage,
            table=self._table,
            factory=self._factory,
            reporter=self._reporter,
            metrics=metrics,
            restore_concurrency=restore_concurrency,
            budget=budget,
            is_stopping=lambda: self._is_stopping,
            is_node_gone=is_node_gone,
            quarantine=quarantine,
        )
        self._quarantine = quarantine
        self._background: set[asyncio.Task[None]] = set()

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._node_id

    @property
    def hosted_count(self) -> int:
        """Sessions hosted now (the node's load)."""
        return len(self._table)

    @property
    def metrics(self) -> NodeMetrics:
        """This node's metrics."""
        return self._metrics

    def session_count(self, workspace_id: str) -> int:
        """Sessions of ``workspace_id`` hosted now."""
        return self._table.count(workspace_id)

    def hosted_workspaces(self) -> set[str]:
        """Every workspace with a session hosted here."""
        return self._table.workspaces()

    def _refuse_if_stopping(self) -> None:
        if self._is_stopping:
            raise Unavailable(
                f"node {self._node_id} is shutting down", retry_after_ms=STOPPING_RETRY_AFTER_MS
            )

    def _hosted(self, workspace_id: str, session_id: str) -> HostedSession:
        session = self._table.get((workspace_id, session_id))
        if session is None:
            raise NotFound(f"session {workspace_id}/{session_id} not found")
        return session

    async def create(
        self,
        workspace_id: str,
        session_id: str,
        *,
        phone_number: str = "",
        labels: dict[str, str] | None = None,
        epoch: int,
    ) -> SessionView:
        """Create and start a session, or return the existing one (see the module docstring).

        ``epoch`` is the owner epoch of the workspace's slot (or pin) on this node."""
        self._refuse_if_stopping()
        key = (workspace_id, session_id)
        async with self._table.locked(key):
            existing = self._table.get(key)
            if existing is not None:
                _check_same_phone(existing.meta, phone_number)
                return existing.view()
            quota = self._quotas.max_sessions
            if quota and self._table.count(workspace_id) >= quota:
                self._metrics.refused("workspace_sessions")
                raise CapacityExhausted(
                    f"workspace {workspace_id} has {quota} sessions, its quota "
                    "(MAX_SESSIONS_PER_WORKSPACE)"
                )
            async with self._table.reservation():  # racing creates count this one
                session = await self._open_for_create(
                    workspace_id, session_id, phone_number, labels, epoch
                )
                self._refuse_if_stopping()  # stop_all may have begun while we wrote
                if not self._admits(workspace_id):  # a handoff began while we wrote
                    raise Unavailable(
                        f"workspace {workspace_id} is moving",
                        retry_after_ms=STOPPING_RETRY_AFTER_MS,
                    )
                self._table.adopt(session)
        return session.view()

    async def _open_for_create(
        self,
        workspace_id: str,
        session_id: str,
        phone_number: str,
        labels: dict[str, str] | None,
        epoch: int,
    ) -> HostedSession:
        """Adopt the stored session if there is a live one, else make a fresh one."""
        stored = await self._storage.load_meta(workspace_id, session_id)
        if stored is not None and not stored.deleted:
            _check_same_phone(stored, phone_number)
            session = await self._factory.open(stored, restore_credentials=True, epoch=epoch)
            self._reporter.assigned(session)
            return session
        now = time.time()
        meta = SessionMeta(
            workspace_id=workspace_id,
            session_id=session_id,
            phone_number=phone_number,
            labels=dict(labels or {}),
            created_at_unix=now,
            updated_at_unix=now,
            instance_migration_count=0,
        )
        if stored is not None:
            # Created again after a delete: the moves so far still count, as in the DB's row.
            meta = meta.changed(
                node_id=stored.node_id,
                instance_migration_count=stored.instance_migration_count,
                previous_node_id=stored.previous_node_id,
                last_instance_migration_at_unix=stored.last_instance_migration_at_unix,
            )
        session = await self._factory.open(
            meta, restore_credentials=False, epoch=epoch, is_new=stored is None
        )
        self._reporter.created(session)
        return session

    async def get(self, workspace_id: str, session_id: str) -> SessionView:
        """The session as it is now; a deleted one from storage; else ``NotFound``."""
        session = self._table.get((workspace_id, session_id))
        if session is not None:
            return session.view()
        reason = self._quarantine.reason_of(workspace_id, session_id)
        if reason is None:
            try:
                stored = await self._storage.load_meta(workspace_id, session_id)
            except CorruptRecord as error:
                reason = str(error)
                self._quarantine.quarantine(workspace_id, session_id, reason)
        if reason is not None:
            raise Quarantined(f"session {workspace_id}/{session_id} is quarantined: {reason}")
        if stored is not None and stored.deleted:
            return SessionView(meta=stored.changed(state=SessionState.STOPPED.value))
        if stored is not None:
            raise _not_running_yet(workspace_id, session_id)
        raise NotFound(f"session {workspace_id}/{session_id} not found")

    async def _raise_not_hosted(self, workspace_id: str, session_id: str) -> NoReturn:
        """Why a session this node serves the workspace of is not in its table: ``NotFound``
        only when storage has no live session of that id — one that is stored but not
        running here (its restore still under way, or stalled) is ``Unavailable``, retried:
        a caller must never be told a session it created does not exist."""
        try:
            stored = await self._storage.load_meta(workspace_id, session_id)
        except CorruptRecord:
            stored = None
        if stored is not None and not stored.deleted:
            raise _not_running_yet(workspace_id, session_id)
        raise NotFound(f"session {workspace_id}/{session_id} not found")

    def qr_code(self, workspace_id: str, session_id: str) -> SessionView:
        """The session, for its QR code; ``NotFound`` if not hosted here."""
        return self._hosted(workspace_id, session_id).view()

    def list_sessions(
        self, workspace_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[SessionView], str]:
        """One page of the workspace's hosted sessions by session_id, and the next token."""
        if page_size < 0:
            raise InvalidInput(f"page_size must not be negative (got {page_size})")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token) if page_token else ""
        sessions = self._table.of_workspace(workspace_id)
        session_ids = sorted(sid for sid in sessions if sid > after)
        page = session_ids[:size]
        next_token = encode_page_token(page[-1]) if len(session_ids) > size else ""
        return [sessions[sid].view() for sid in page], next_token

    async def delete(
        self,
        workspace_id: str,
        session_id: str,
        *,
        reason: str,
        details: str = "",
        epoch: int | None = None,
    ) -> SessionView:
        """Stop, log out and mark deleted (idempotent; see the module docstring). ``epoch``:
        the ownership the call was authorized under; a stored meta of a newer owner is not
        overwritten (the call gets ``Unavailable`` and the caller retries at the new owner)."""
        self._refuse_if_stopping()
        key = (workspace_id, session_id)
        async with self._table.locked(key):
            session = self._table.get(key)
            if session is not None:
                await session.stop(logout=True, reason=reason, details=details)
                self._table.remove(session)
                self._metrics.state_changed(session.state.value, None)
                await self._storage.delete_credentials(workspace_id, session_id)
                return session.view()
            stored = await self._storage.load_meta(workspace_id, session_id)
            if stored is None:
                return SessionView(
                    meta=SessionMeta(
                        workspace_id=workspace_id,
                        session_id=session_id,
                        node_id=self._node_id,
                        state=SessionState.STOPPED.value,
                        disconnect_reason=reason,
                        disconnect_details=details,
                        deleted=True,
                    )
                )
            if not stored.deleted:
                stored = await self._delete_offline(
                    stored, reason=reason, details=details, epoch=epoch
                )
            return SessionView(meta=stored.changed(state=SessionState.STOPPED.value))

    async def _delete_offline(
        self, stored: SessionMeta, *, reason: str, details: str, epoch: int | None
    ) -> SessionMeta:
        """Record the deletion of a session stored but not running here (its node is gone)."""
        now = time.time()
        stored = stored.changed(
            state=SessionState.STOPPED.value,
            deleted=True,
            disconnect_reason=reason,
            disconnect_details=details,
            disconnected_at_unix=now,
            updated_at_unix=now,
        )
        try:
            await self._storage.save_meta(stored, fence_epoch=epoch)
        except StaleWrite as error:
            raise Unavailable(
                f"session {stored.workspace_id}/{stored.session_id} moved to a newer owner",
                retry_after_ms=STALE_DELETE_RETRY_AFTER_MS,
            ) from error
        await self._storage.delete_credentials(stored.workspace_id, stored.session_id)
        self._reporter.deleted_offline(
            stored.workspace_id, stored.session_id, reason=reason, details=details
        )
        return stored

    async def send(
        self,
        workspace_id: str,
        session_id: str,
        client_message_id: str,
        to: str,
        text: str,
        *,
        epoch: int,
    ) -> SendResult:
        """Accept a message into the session's outbox (deduped on ``client_message_id``)."""
        self._refuse_if_stopping()
        wait_ms = self._send_rate.take(workspace_id)
        if wait_ms:
            self._metrics.refused("send_rate")
            raise CapacityExhausted(
                f"workspace {workspace_id} sends faster than its quota "
                f"({self._quotas.sends_per_second:g}/s, SENDS_PER_SECOND_PER_WORKSPACE)",
                retry_after_ms=wait_ms,
            )
        session = self._table.get((workspace_id, session_id))
        if session is None:
            await self._raise_not_hosted(workspace_id, session_id)
        result = await session.send(client_message_id, to, text, node_id=self._node_id, epoch=epoch)
        if not result.is_duplicate:
            self._metrics.message_accepted()
        return result

    async def request_pairing_code(
        self, workspace_id: str, session_id: str, phone_number: str
    ) -> str:
        """A code that pairs the session by ``phone_number`` once typed on the phone."""
        self._refuse_if_stopping()
        session = self._table.get((workspace_id, session_id))
        if session is None:
            await self._raise_not_hosted(workspace_id, session_id)
        check_pairable(session.meta, phone_number)
        return await session.request_pairing_code(phone_number)

    def watch(self, workspace_id: str, session_id: str) -> tuple[HostedSession, Subscription]:
        """The session and a new subscription to its events (unsubscribe when done)."""
        self._refuse_if_stopping()
        session = self._hosted(workspace_id, session_id)
        return session, session.subscribe()

    async def restore_workspaces(
        self, workspace_ids: Iterable[str], *, epoch: int, fence_epoch: int | None = None
    ) -> int:
        """Start the stored sessions of these workspaces (see :mod:`node.restore`)."""
        return await self._restores.restore_workspaces(
            workspace_ids, epoch=epoch, fence_epoch=fence_epoch
        )

    async def stop_workspaces(self, workspace_ids: set[str]) -> None:
        """Stop the sessions of these workspaces gracefully (state and outbox flushed, no
        logout), as a handoff or a fence needs; they are restored elsewhere. A caller cut
        short (a shutdown's deadline) leaves the stops running: :meth:`stop_all` waits for
        them before the lease goes."""
        await self._stop_sessions(self._table.take_workspaces(workspace_ids))

    async def stop_all_sessions(self) -> None:
        """Stop every session now (the lease is going): the node keeps running, empty."""
        await self._stop_sessions(self._table.take_all())

    async def _stop_sessions(self, sessions: Iterable[HostedSession]) -> None:
        tasks = [self._stop_in_background(session) for session in sessions]
        if not tasks:
            return
        await asyncio.wait(tasks)  # not gather: a cancelled caller must not cancel a stop
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def _stop_in_background(self, session: HostedSession) -> asyncio.Task[None]:
        task = asyncio.create_task(
            self._stop_one(session), name=f"stop-{session.workspace_id}/{session.session_id}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _on_fenced(self, session: HostedSession) -> None:
        # A newer owner took this session: drop it and stop it, writing nothing.
        if self._table.remove(session):
            self._stop_in_background(session)

    async def _stop_one(self, session: HostedSession) -> None:
        await session.stop(logout=False)
        self._metrics.state_changed(session.state.value, None)
        size_bytes = await self._storage.size_bytes(session.workspace_id, session.session_id)
        self._reporter.stored_size(session, size_bytes=size_bytes)

    async def stop_all(self) -> None:
        """Stop every session gracefully (not logged out: they restore later), flushing state;
        from here on calls are refused with a retry hint."""
        self._is_stopping = True
        sessions = self._table.take_all()
        stops = [*self._background, *(self._stop_in_background(s) for s in sessions)]
        # Every stop under way too (a handoff cut short by a shutdown's deadline began some):
        # the lease is revoked after this, and no session may still be connected then.
        if stops:
            await asyncio.wait(stops)


NOT_RUNNING_YET_RETRY_AFTER_MS = 500
"""Retry hint for a stored session this node serves but does not run (yet)."""


def _not_running_yet(workspace_id: str, session_id: str) -> Unavailable:
    return Unavailable(
        f"session {workspace_id}/{session_id} is stored but not running here yet (restoring)",
        retry_after_ms=NOT_RUNNING_YET_RETRY_AFTER_MS,
    )


def _check_same_phone(meta: SessionMeta, phone_number: str) -> None:
    if phone_number and meta.phone_number != phone_number:
        raise AlreadyExists(
            f"session {meta.workspace_id}/{meta.session_id} exists with another phone number"
        )
