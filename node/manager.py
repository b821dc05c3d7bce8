"""All the sessions of one node: create, look up, list, delete, send, watch, restore, stop.

Semantics the API relies on:

- ``create`` is idempotent on session_id: the same id returns the session as it is (labels
  of the first create are kept); a different, non-empty phone number is ``AlreadyExists``.
  A session stored by another node and not deleted is adopted: restored from its stored
  credentials, without a QR. A deleted one is created afresh (a new QR).
- ``delete`` is idempotent: it stops the session, logs it out, forgets its credentials and
  marks its meta deleted with the reason; the folder stays as a record. Deleting a deleted
  session returns it as STOPPED with the first reason; deleting an unknown one returns a
  STOPPED session with the given reason and writes nothing (as the API contract says).
- ``get`` of a deleted session returns it STOPPED (from storage); of a session this node does
  not host, ``NotFound``. ``list`` shows the sessions this node hosts.

The accounts DB hears about every change through ``AccountStore.record_*``, which only queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from node.drivers.base import DriverFactory
from node.events import Subscription
from node.metrics import NodeMetrics
from node.reporting import SessionReporter
from node.session import HostedSession, SendResult, SessionState, SessionView
from node.storage import SessionMeta, SessionStorage
from registry.accounts import AccountStore
from registry.errors import AlreadyExists, CapacityExhausted, InvalidInput, NotFound, Unavailable
from registry.ids import validate_id

_log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
RESTORE_START_TIMEOUT_SECONDS = 10.0
"""How long one restore may hold a restore slot while its driver connects."""
STOPPING_RETRY_AFTER_MS = 200
"""The retry hint while this node shuts down: the gateway re-routes meanwhile."""

_SessionKey = tuple[str, str]


@dataclass
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def encode_page_token(session_id: str) -> str:
    """The opaque token that resumes a listing after ``session_id``."""
    return base64.urlsafe_b64encode(session_id.encode()).decode()


def decode_page_token(token: str) -> str:
    """The session_id a page token resumes after; raises ``InvalidInput`` for a bad token."""
    try:
        session_id = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        return validate_id(session_id, field="page_token")
    except (UnicodeError, binascii.Error, InvalidInput):
        raise InvalidInput(
            "page_token is invalid: pass a next_page_token from a previous response"
        ) from None


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
        restore_concurrency: int = 32,
        accounts: AccountStore | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._node_id = node_id
        self._storage = storage
        self._driver_factory = driver_factory
        self._max_sessions = max_sessions
        self._restore_concurrency = restore_concurrency
        self._metrics = metrics or NodeMetrics(node_id, capacity=max_sessions)
        self._reporter = SessionReporter(
            node_id=node_id, node_address=node_address, metrics=self._metrics, accounts=accounts
        )
        self._sessions: dict[_SessionKey, HostedSession] = {}
        self._key_locks: dict[_SessionKey, _KeyLock] = {}
        # Creates in flight: counted against max_sessions before they are hosted.
        self._reserved = 0
        self._is_stopping = False

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._node_id

    @property
    def hosted_count(self) -> int:
        """Sessions hosted now (the node's load)."""
        return len(self._sessions)

    @property
    def is_stopping(self) -> bool:
        """Whether ``stop_all`` has begun: calls get ``Unavailable`` with a retry hint."""
        return self._is_stopping

    @property
    def metrics(self) -> NodeMetrics:
        """This node's metrics."""
        return self._metrics

    @contextlib.asynccontextmanager
    async def _locked(self, key: _SessionKey) -> AsyncIterator[None]:
        # One create or delete per session at a time; other sessions proceed in parallel.
        # Counted so the lock is dropped when its last user leaves, never while one waits.
        entry = self._key_locks.get(key)
        if entry is None:
            entry = self._key_locks[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._key_locks[key]

    def _refuse_if_stopping(self) -> None:
        if self._is_stopping:
            raise Unavailable(
                f"node {self._node_id} is shutting down", retry_after_ms=STOPPING_RETRY_AFTER_MS
            )

    def _hosted(self, workspace_id: str, session_id: str) -> HostedSession:
        session = self._sessions.get((workspace_id, session_id))
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
    ) -> SessionView:
        """Create and start a session, or return the existing one (see the module docstring)."""
        self._refuse_if_stopping()
        key = (workspace_id, session_id)
        async with self._locked(key):
            existing = self._sessions.get(key)
            if existing is not None:
                self._check_same_phone(existing.meta, phone_number)
                return existing.view()
            self._check_capacity()
            self._reserved += 1  # held while we read and write, so racing creates count it
            try:
                session = await self._open_for_create(
                    workspace_id, session_id, phone_number, labels
                )
                self._refuse_if_stopping()  # stop_all may have begun while we wrote
                self._adopt(session)
            finally:
                self._reserved -= 1
        return session.view()

    async def _open_for_create(
        self,
        workspace_id: str,
        session_id: str,
        phone_number: str,
        labels: dict[str, str] | None,
    ) -> HostedSession:
        """Adopt the stored session if there is a live one, else make a fresh one."""
        stored = await self._storage.load_meta(workspace_id, session_id)
        if stored is not None and not stored.deleted:
            self._check_same_phone(stored, phone_number)
            session = await self._open(stored, restore_credentials=True)
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
        )
        session = await self._open(meta, restore_credentials=False)
        storage_path = str(self._storage.session_dir(workspace_id, session_id))
        self._reporter.created(session, storage_path=storage_path)
        return session

    def _check_same_phone(self, meta: SessionMeta, phone_number: str) -> None:
        if phone_number and meta.phone_number != phone_number:
            raise AlreadyExists(
                f"session {meta.workspace_id}/{meta.session_id} exists with another phone number"
            )

    def _check_capacity(self) -> None:
        if len(self._sessions) + self._reserved >= self._max_sessions:
            raise CapacityExhausted(
                f"node {self._node_id} hosts {len(self._sessions)} sessions, its limit"
            )

    async def _open(self, meta: SessionMeta, *, restore_credentials: bool) -> HostedSession:
        """A new HostedSession for ``meta`` on this node, with its outbox (and credentials),
        its meta written to storage as STARTING on this node; not started yet."""
        workspace_id, session_id = meta.workspace_id, meta.session_id
        credentials = (
            await self._storage.load_credentials(workspace_id, session_id)
            if restore_credentials
            else None
        )
        session = HostedSession(
            meta=meta.changed(node_id=self._node_id, deleted=False, updated_at_unix=time.time()),
            storage=self._storage,
            driver=self._driver_factory(workspace_id, session_id),
            outbox_entries=await self._storage.load_outbox(workspace_id, session_id),
            credentials=credentials,
            observer=self._reporter,
        )
        await self._storage.save_meta(session.meta)
        return session

    def _adopt(self, session: HostedSession) -> None:
        self._sessions[(session.workspace_id, session.session_id)] = session
        self._metrics.state_changed(None, session.state.value)
        self._metrics.hosted(len(self._sessions))
        session.start()

    async def get(self, workspace_id: str, session_id: str) -> SessionView:
        """The session as it is now; a deleted one from storage; else ``NotFound``."""
        session = self._sessions.get((workspace_id, session_id))
        if session is not None:
            return session.view()
        stored = await self._storage.load_meta(workspace_id, session_id)
        if stored is not None and stored.deleted:
            return SessionView(meta=stored.changed(state=SessionState.STOPPED.value))
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
        session_ids = sorted(
            sid for ws, sid in self._sessions if ws == workspace_id and sid > after
        )
        page = session_ids[:size]
        next_token = encode_page_token(page[-1]) if len(session_ids) > size else ""
        return [self._sessions[(workspace_id, sid)].view() for sid in page], next_token

    async def delete(
        self, workspace_id: str, session_id: str, *, reason: str, details: str = ""
    ) -> SessionView:
        """Stop, log out and mark deleted (idempotent; see the module docstring)."""
        self._refuse_if_stopping()
        key = (workspace_id, session_id)
        async with self._locked(key):
            session = self._sessions.get(key)
            if session is not None:
                await session.stop(logout=True, reason=reason, details=details)
                del self._sessions[key]
                self._metrics.state_changed(session.state.value, None)
                self._metrics.hosted(len(self._sessions))
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
                # Stored but not running here (its node is gone): record the deletion anyway.
                now = time.time()
                stored = stored.changed(
                    state=SessionState.STOPPED.value,
                    deleted=True,
                    disconnect_reason=reason,
                    disconnect_details=details,
                    disconnected_at_unix=now,
                    updated_at_unix=now,
                )
                await self._storage.save_meta(stored)
                await self._storage.delete_credentials(workspace_id, session_id)
                self._reporter.deleted_offline(
                    workspace_id, session_id, reason=reason, details=details
                )
            return SessionView(meta=stored.changed(state=SessionState.STOPPED.value))

    async def send(
        self, workspace_id: str, session_id: str, client_message_id: str, to: str, text: str
    ) -> SendResult:
        """Accept a message into the session's outbox (deduped on ``client_message_id``)."""
        self._refuse_if_stopping()
        result = await self._hosted(workspace_id, session_id).send(
            client_message_id, to, text, node_id=self._node_id
        )
        if not result.is_duplicate:
            self._metrics.message_accepted()
        return result

    def watch(self, workspace_id: str, session_id: str) -> tuple[HostedSession, Subscription]:
        """The session and a new subscription to its events (unsubscribe when done)."""
        self._refuse_if_stopping()
        session = self._hosted(workspace_id, session_id)
        return session, session.subscribe()

    async def restore_owned(self) -> int:
        """Start again every stored session this node ran and nobody deleted; return how many.

        Restores run ``restore_concurrency`` at a time, from stored credentials (no QR).
        """
        metas = await self._storage.load_all_meta()
        owned = [meta for meta in metas if meta.node_id == self._node_id and not meta.deleted]
        semaphore = asyncio.Semaphore(self._restore_concurrency)

        async def restore(meta: SessionMeta) -> bool:
            async with semaphore:
                key = (meta.workspace_id, meta.session_id)
                async with self._locked(key):
                    if key in self._sessions:
                        return False
                    session = await self._open(meta, restore_credentials=True)
                    self._adopt(session)
                    self._reporter.assigned(session)
                self._metrics.session_restored()
                try:
                    # Bounds the restores in flight, not the start itself: a slow one goes on.
                    await asyncio.wait_for(session.wait_started(), RESTORE_START_TIMEOUT_SECONDS)
                except TimeoutError:
                    _log.warning(
                        "session_restore_slow workspace_id=%s session_id=%s",
                        meta.workspace_id,
                        meta.session_id,
                    )
                return True

        results = await asyncio.gather(*(restore(meta) for meta in owned), return_exceptions=True)
        for meta, result in zip(owned, results, strict=True):
            if isinstance(result, BaseException):
                _log.error(
                    "session_restore_failed workspace_id=%s session_id=%s error=%r",
                    meta.workspace_id,
                    meta.session_id,
                    result,
                )
        restored = sum(1 for result in results if result is True)
        if len(self._sessions) > self._max_sessions:
            _log.warning(
                "node_over_capacity node_id=%s sessions=%d max_sessions=%d",
                self._node_id,
                len(self._sessions),
                self._max_sessions,
            )
        return restored

    async def _stop_one(self, session: HostedSession) -> None:
        await session.stop(logout=False)
        self._metrics.state_changed(session.state.value, None)
        size_bytes = await self._storage.size_bytes(session.workspace_id, session.session_id)
        self._reporter.stored_size(session, size_bytes=size_bytes)

    async def stop_all(self) -> None:
        """Stop every session gracefully (not logged out: they restore later), flushing state."""
        self._is_stopping = True
        sessions = list(self._sessions.values())
        await asyncio.gather(*(self._stop_one(session) for session in sessions))
        self._sessions.clear()
        self._metrics.hosted(0)
