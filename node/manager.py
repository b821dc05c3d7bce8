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
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from node.drivers.base import DriverFactory
from node.events import Subscription
from node.fencing import EpochFence, Fenced
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
LET_GO_TIMEOUT_SECONDS = 1.0
"""How long a restore waits for a session's previous node to record it stopped. A node that
hands off or fences itself stops first; one that crashed never records it, so this bounds
what a crash adds to the failover time."""
LET_GO_POLL_SECONDS = 0.02
_LET_GO_STATES = frozenset({"stopped", "failed"})

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
        # Shared by every restore at once (all slots being acquired), so a failover or a
        # cold start restores at most restore_concurrency sessions in parallel.
        self._restore_slots = asyncio.Semaphore(restore_concurrency)
        self._admits: Callable[[str], bool] = lambda workspace_id: True
        self._background: set[asyncio.Task[None]] = set()

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

    def set_admission(self, admits: Callable[[str], bool]) -> None:
        """Only adopt a new session of a workspace while ``admits(workspace_id)`` holds (the
        node still serves it): checked right before the session joins, after every await."""
        self._admits = admits

    def session_count(self, workspace_id: str) -> int:
        """Sessions of ``workspace_id`` hosted now."""
        return sum(1 for ws, _ in self._sessions if ws == workspace_id)

    def hosted_workspaces(self) -> set[str]:
        """Every workspace with a session hosted here."""
        return {ws for ws, _ in self._sessions}

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
        epoch: int = 0,
    ) -> SessionView:
        """Create and start a session, or return the existing one (see the module docstring).

        ``epoch`` is the owner epoch of the workspace's slot (or pin) on this node."""
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
                    workspace_id, session_id, phone_number, labels, epoch
                )
                self._refuse_if_stopping()  # stop_all may have begun while we wrote
                if not self._admits(workspace_id):  # a handoff began while we wrote
                    raise Unavailable(
                        f"workspace {workspace_id} is moving",
                        retry_after_ms=STOPPING_RETRY_AFTER_MS,
                    )
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
        epoch: int,
    ) -> HostedSession:
        """Adopt the stored session if there is a live one, else make a fresh one."""
        stored = await self._storage.load_meta(workspace_id, session_id)
        if stored is not None and not stored.deleted:
            self._check_same_phone(stored, phone_number)
            session = await self._open(stored, restore_credentials=True, epoch=epoch)
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
        session = await self._open(meta, restore_credentials=False, epoch=epoch)
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

    async def _open(
        self, meta: SessionMeta, *, restore_credentials: bool, epoch: int, is_takeover: bool = False
    ) -> HostedSession:
        """A new HostedSession for ``meta`` on this node, with its outbox (and credentials),
        its meta written to storage as STARTING on this node under ``epoch``; not started yet.

        Raises ``Fenced`` if the stored meta already names a newer owner epoch."""
        workspace_id, session_id = meta.workspace_id, meta.session_id
        fence = EpochFence(self._storage, workspace_id, session_id, epoch=epoch)
        if not is_takeover:
            await fence.check()
        credentials = (
            await self._storage.load_credentials(workspace_id, session_id)
            if restore_credentials
            else None
        )
        session = HostedSession(
            meta=meta.changed(
                node_id=self._node_id,
                deleted=False,
                updated_at_unix=time.time(),
                owner_epoch=epoch,
            ),
            storage=self._storage,
            driver=self._driver_factory(workspace_id, session_id),
            outbox_entries=await self._storage.load_outbox(workspace_id, session_id),
            credentials=credentials,
            observer=self._reporter,
            fence=fence,
            on_fenced=self._on_fenced,
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

    async def restore_workspaces(
        self, workspace_ids: Iterable[str], *, epoch: int, is_takeover: bool = False
    ) -> int:
        """Start every stored, not deleted session of these workspaces that is not hosted yet,
        from stored credentials (no QR), under ``epoch``; return how many started.

        At most ``restore_concurrency`` restores run at once across the whole node. A session
        whose meta says another node still runs it gets up to ``LET_GO_TIMEOUT_SECONDS`` to
        stop there first (a pin move or a fenced owner), so it never runs twice.

        ``is_takeover``: the workspace comes back from a pinned owner that released it, whose
        epoch (another key's) may be newer than this slot's: the stored epoch is overwritten."""
        metas: list[SessionMeta] = []
        for workspace_id in workspace_ids:
            for session_id in await self._storage.list_sessions(workspace_id):
                meta = await self._storage.load_meta(workspace_id, session_id)
                if meta is not None and not meta.deleted:
                    metas.append(meta)
        results = await asyncio.gather(
            *(self._restore(meta, epoch, is_takeover) for meta in metas),
            return_exceptions=True,
        )
        for meta, result in zip(metas, results, strict=True):
            if isinstance(result, BaseException):
                _log.error(
                    "session_restore_failed workspace_id=%s session_id=%s error=%r",
                    meta.workspace_id,
                    meta.session_id,
                    result,
                )
        return sum(1 for result in results if result is True)

    async def _wait_let_go(self, meta: SessionMeta) -> None:
        deadline = time.monotonic() + LET_GO_TIMEOUT_SECONDS
        stored: SessionMeta | None = meta
        while (
            stored is not None
            and stored.node_id not in ("", self._node_id)
            and stored.state not in _LET_GO_STATES
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(LET_GO_POLL_SECONDS)
            stored = await self._storage.load_meta(meta.workspace_id, meta.session_id)

    async def _restore(self, meta: SessionMeta, epoch: int, is_takeover: bool) -> bool:
        key = (meta.workspace_id, meta.session_id)
        if key in self._sessions:
            return False
        await self._wait_let_go(meta)
        async with self._restore_slots:
            async with self._locked(key):
                if key in self._sessions:
                    return False
                # Re-read: the previous runner wrote its last state while we waited.
                meta = await self._storage.load_meta(*key) or meta
                if meta.deleted:
                    return False
                try:
                    session = await self._open(
                        meta, restore_credentials=True, epoch=epoch, is_takeover=is_takeover
                    )
                except Fenced:
                    return False  # a newer owner restored it already: we are the stale one
                self._adopt(session)
                self._reporter.assigned(session)
            self._metrics.session_restored()
            try:
                # Bounds the restores in flight, not the start itself: a slow one goes on.
                async with asyncio.timeout(RESTORE_START_TIMEOUT_SECONDS):
                    await session.wait_started()
            except TimeoutError:
                _log.warning(
                    "session_restore_slow workspace_id=%s session_id=%s",
                    meta.workspace_id,
                    meta.session_id,
                )
            return True

    async def stop_workspaces(self, workspace_ids: set[str]) -> None:
        """Stop the sessions of these workspaces gracefully (state and outbox flushed, no
        logout), as a handoff or a fence needs; they are restored elsewhere."""
        sessions = [s for (ws, _), s in self._sessions.items() if ws in workspace_ids]
        for session in sessions:
            self._sessions.pop((session.workspace_id, session.session_id), None)
        self._metrics.hosted(len(self._sessions))
        await asyncio.gather(*(self._stop_one(session) for session in sessions))

    async def fence_all(self) -> None:
        """Stop every session now (the lease is going): the node keeps running, empty."""
        await self.stop_workspaces(self.hosted_workspaces())

    def _on_fenced(self, session: HostedSession) -> None:
        # A newer owner took this session: drop it and stop it, writing nothing.
        key = (session.workspace_id, session.session_id)
        if self._sessions.get(key) is session:
            del self._sessions[key]
            self._metrics.hosted(len(self._sessions))
            task = asyncio.create_task(self._stop_one(session), name=f"fenced-{key}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _stop_one(self, session: HostedSession) -> None:
        await session.stop(logout=False)
        self._metrics.state_changed(session.state.value, None)
        size_bytes = await self._storage.size_bytes(session.workspace_id, session.session_id)
        self._reporter.stored_size(session, size_bytes=size_bytes)

    async def stop_all(self) -> None:
        """Stop every session gracefully (not logged out: they restore later), flushing state."""
        self._is_stopping = True
        await asyncio.gather(*self._background, return_exceptions=True)
        sessions = list(self._sessions.values())
        await asyncio.gather(*(self._stop_one(session) for session in sessions))
        self._sessions.clear()
        self._metrics.hosted(0)
