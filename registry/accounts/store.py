"""The accounts database, written beside the call path — also when it is down.

Every ``record_*`` method only enqueues and returns at once: no call, move or start waits on
the DB. Each takes the owner ``epoch`` the change was made under; a row keeps the newest epoch
that wrote it (``owner_epoch``) and refuses changes made under an older one, so a stale owner's
late write cannot overwrite its successor's. A background task brings the schema to head (if
asked), then writes what is queued in batches — one transaction per batch, changes coalesced
per session (:mod:`registry.accounts.changes`) — on a thread of its own
(:mod:`registry.accounts.writer`).

When the database is unreachable or not ready the store logs ``accounts_unavailable`` and
tries again with a jittered backoff, keeping what is queued; it logs ``accounts_available``
when it writes again. The queue is bounded (``max_pending_sessions``): once full, a change for
a session with nothing queued yet is dropped, while sessions already queued go on coalescing.
A row the database refuses on its own is retried ``MAX_ROW_ATTEMPTS`` times, then dropped.
Every drop is logged and told to ``on_changes_dropped(reason, count)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from functools import partial

import structlog
from sqlalchemy import Engine

from registry.accounts.changes import MoveHistory, Pending, Placements
from registry.accounts.engine import make_engine
from registry.accounts.models import utc_now
from registry.accounts.schema import current_revision, head_revision, upgrade
from registry.accounts.writer import BatchOutcome, DatabaseThread, SessionKey, write_batch
from registry.background import stop_task
from registry.backoff import Backoff, Retries
from registry.errors import Unavailable

_log = structlog.get_logger(__name__)

DEFAULT_MAX_PENDING_SESSIONS = 20_000
"""Sessions with queued changes, at most (about 1 KB each)."""
MAX_ROW_ATTEMPTS = 3
"""Writes a row may fail on its own before its changes are dropped: more than one, because two
nodes inserting one new row at once make one of them fail once."""
STATEMENT_TIMEOUT_SECONDS = 10.0
"""No statement of a batch waits longer for a server database's answer."""
STOP_TIMEOUT_SECONDS = 3.0
"""How long ``stop`` waits for the database to take what is queued."""
RETRY_BACKOFF = Backoff(initial_seconds=0.5, max_seconds=10.0, jitter=0.2)
"""Delays between attempts while the database is unavailable."""
QUEUE_FULL = "queue_full"
ROW_REFUSED = "row_refused"
UNWRITTEN_AT_STOP = "unwritten_at_stop"
"""The reasons a change is dropped, as ``on_changes_dropped`` hears them."""


class AccountStore:
    """Queue-fed writer of the ``whatsapp_accounts`` table (see the module docstring).

    Changes are coalesced per session: one row write per session per flush, whatever the
    number of calls. A failed write is logged and retried, never raised.
    """

    def __init__(
        self,
        database_url: str,
        *,
        flush_interval_seconds: float = 0.5,
        max_pending_sessions: int = DEFAULT_MAX_PENDING_SESSIONS,
        upgrade_schema: bool = False,
        on_changes_dropped: Callable[[str, int], None] | None = None,
    ) -> None:
        self._database_url = database_url
        self._flush_interval_seconds = flush_interval_seconds
        self._max_pending_sessions = max_pending_sessions
        self._upgrade_schema = upgrade_schema
        self._on_changes_dropped = on_changes_dropped
        self._engine: Engine | None = None
        """Opened and used on the database thread only."""
        self._thread: DatabaseThread | None = None
        self._pending: dict[SessionKey, Pending] = {}
        self._in_flight = 0
        """Sessions in the batch being written (they count against the bound)."""
        self._is_ready = False
        """The schema was found at head since the database last failed."""
        self._unavailable_since: float | None = None
        self._retries = Retries(RETRY_BACKOFF)
        self._dropped_unlogged = 0
        self._write_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        """Set by ``write_soon`` and ``stop``: the writer does not wait for its interval."""
        self._task: asyncio.Task[None] | None = None

    @property
    def pending_count(self) -> int:
        """Sessions with changes not yet committed."""
        return len(self._pending) + self._in_flight

    @property
    def is_available(self) -> bool:
        """Whether the database answered the last attempt to reach it (True before the first)."""
        return self._unavailable_since is None

    async def start(self) -> None:
        """Start the background writer and return at once: the database is reached (and the
        schema upgraded, with ``upgrade_schema``) beside the caller, as often as it takes."""
        self._thread = DatabaseThread(name="accounts-db")
        self._stopping.clear()
        self._task = asyncio.create_task(self._write_periodically(), name="accounts-flush")

    async def stop(self) -> None:
        """Write what is queued (waiting at most ``STOP_TIMEOUT_SECONDS`` for the database),
        then close; what could not be written is logged and dropped."""
        if self._task is not None:
            self._stopping.set()
            self._wake.set()
            try:
                async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                    await asyncio.shield(self._task)
                    await self.flush()
            except TimeoutError:
                await stop_task(self._task)
            self._task = None
        lost = self.pending_count
        if lost:
            self._pending = {}
            self._dropped(UNWRITTEN_AT_STOP, lost)
        if self._thread is not None:
            if not self._thread.is_busy:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                        await self._thread.run(self._dispose)
            # A call still stuck on the database closes the engine when it ends (or never:
            # the thread is a daemon, it does not hold the process's exit up).
            self._thread.close(last=self._dispose)
            self._thread = None

    async def flush(self) -> None:
        """Write everything queued so far now (whatever the backoff), and return when it is
        committed — or when the attempt failed: then it is logged and the changes stay queued."""
        await self._attempt()

    def write_soon(self) -> None:
        """Write what is queued at the next chance, without waiting for it (a handoff's rows
        then usually land before the next owner's)."""
        self._wake.set()

    # -- recording ----------------------------------------------------------------------

    def record_created(
        self,
        *,
        workspace_id: str,
        session_id: str,
        phone_number: str,
        node_id: str,
        node_url: str,
        storage_path: str,
        epoch: int = 0,
        history: MoveHistory | None = None,
    ) -> None:
        """A session was created on ``node_id`` (insert, or update if the row exists);
        ``history``: see :meth:`record_assignment`."""
        self.record_assignment(
            workspace_id=workspace_id,
            session_id=session_id,
            node_id=node_id,
            node_url=node_url,
            epoch=epoch,
            history=history,
            phone_number=phone_number,
            storage_path=storage_path,
        )

    def record_assignment(
        self,
        *,
        workspace_id: str,
        session_id: str,
        node_id: str,
        node_url: str,
        epoch: int = 0,
        history: MoveHistory | None = None,
        phone_number: str = "",
        storage_path: str = "",
    ) -> None:
        """The session now runs on ``node_id``. With ``history`` (the session's own record of
        its moves) the move columns are set to it; without, a row naming another node makes
        that node ``previous_node_id``, adds one to ``instance_migration_count`` and sets
        ``last_instance_migration_at``, and the same node again changes nothing."""
        pending = self._queue(workspace_id, session_id, epoch)
        if pending is not None:
            pending.place(
                Placements(
                    first_node_id=node_id,
                    first_at=utc_now(),
                    node_id=node_id,
                    node_url=node_url,
                    history=history,
                    phone_number=phone_number or None,
                    storage_path=storage_path or None,
                )
            )

    def record_status(
        self, *, workspace_id: str, session_id: str, status: str, epoch: int = 0
    ) -> None:
        """The session's state changed (``status``: the state name, lower case, e.g. ``ready``)."""
        if (pending := self._queue(workspace_id, session_id, epoch)) is not None:
            pending.status = status

    def record_disconnect(
        self, *, workspace_id: str, session_id: str, reason: str, details: str, epoch: int = 0
    ) -> None:
        """The session disconnected or was deleted: sets ``disconnected_at``, reason, details."""
        if (pending := self._queue(workspace_id, session_id, epoch)) is not None:
            pending.disconnect = (reason, details, utc_now())

    def record_activity(self, *, workspace_id: str, session_id: str, epoch: int = 0) -> None:
        """The session did something now; coalesced, written at the next flush."""
        if (pending := self._queue(workspace_id, session_id, epoch)) is not None:
            pending.activity_at = utc_now()

    def record_storage(
        self, *, workspace_id: str, session_id: str, size_bytes: int, epoch: int = 0
    ) -> None:
        """The session's stored files were verified at ``size_bytes`` now."""
        if (pending := self._queue(workspace_id, session_id, epoch)) is not None:
            pending.storage = (size_bytes, utc_now())

    def _queue(self, workspace_id: str, session_id: str, epoch: int) -> Pending | None:
        """The session's queued changes, or None if the change must be dropped (queue full)."""
        key = (workspace_id, session_id)
        pending = self._pending.get(key)
        if pending is None:
            if self.pending_count >= self._max_pending_sessions:
                if not self._dropped_unlogged:
                    _log.warning(
                        "accounts_queue_full", max_pending_sessions=self._max_pending_sessions
                    )
                self._dropped_unlogged += 1
                self._count_dropped(QUEUE_FULL, 1)
                return None
            pending = self._pending[key] = Pending(workspace_id=workspace_id)
        pending.workspace_id = workspace_id
        pending.epoch = max(pending.epoch, epoch)
        return pending

    # -- writing ------------------------------------------------------------------------

    async def _write_periodically(self) -> None:
        delay = 0.0  # the first attempt at once: upgrade the schema, write what is queued
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                answered = await self._attempt()
            except Exception:
                # A bug here must not end the writer: everything after it would queue forever.
                _log.exception("accounts_write_crashed")
                answered = False
            if answered:
                self._retries.reset()
                delay = self._flush_interval_seconds
            else:
                delay = self._retries.next_delay_seconds()

    async def _attempt(self) -> bool:
        """Reach the database if it was not, then write what is queued; whether it answered."""
        if self._thread is None:
            return False
        async with self._write_lock:
            if self._dropped_unlogged:
                self._dropped_unlogged, dropped = 0, self._dropped_unlogged
                _log.warning("accounts_changes_dropped", reason=QUEUE_FULL, count=dropped)
            if not self._is_ready:
                try:
                    await self._thread.run(self._prepare)
                except Exception as error:
                    # Not only SQLAlchemyError: a bad SQLite path is an OSError, a schema
                    # at an unknown revision an Alembic error; all of them may heal.
                    self._unavailable(error)
                    return False
                self._is_ready = True
            if not self._pending:
                self._available()
                return True
            batch, self._pending = self._pending, {}
            self._in_flight = len(batch)
            try:
                outcome = await self._thread.run(partial(self._write, batch))
            except asyncio.CancelledError:
                # Given up on (a stop past its bound): counted as unwritten, though the
                # thread may still commit it.
                self._settle(BatchOutcome(unwritten=batch))
                raise
            finally:
                self._in_flight = 0
            self._settle(outcome)
            if outcome.database_error is not None:
                self._unavailable(outcome.database_error)
                return False
            self._available()
            return True

    def _settle(self, outcome: BatchOutcome) -> None:
        """Queue again what was not written, under what was queued meanwhile."""
        requeued = dict(outcome.unwritten)
        for key, (pending, error) in outcome.refused.items():
            pending.failures += 1
            if pending.failures < MAX_ROW_ATTEMPTS:
                requeued[key] = pending
                continue
            workspace_id, session_id = key
            _log.error(
                "accounts_row_refused",
                workspace_id=workspace_id,
                session_id=session_id,
                attempts=pending.failures,
                error=error,
            )
            self._count_dropped(ROW_REFUSED, 1)
        if not requeued:
            return
        for key, newer in self._pending.items():
            if key in requeued:
                requeued[key].absorb(newer)
            else:
                requeued[key] = newer
        self._pending = requeued

    def _unavailable(self, error: BaseException) -> None:
        self._is_ready = False
        if self._unavailable_since is None:
            self._unavailable_since = time.monotonic()
        _log.warning(
            "accounts_unavailable",
            error=error,
            pending_sessions=self.pending_count,
            attempt=self._retries.attempt + 1,
        )

    def _available(self) -> None:
        if self._unavailable_since is None:
            return
        _log.info(
            "accounts_available",
            pending_sessions=self.pending_count,
            unavailable_seconds=round(time.monotonic() - self._unavailable_since, 1),
        )
        self._unavailable_since = None

    def _dropped(self, reason: str, count: int) -> None:
        _log.error("accounts_changes_dropped", reason=reason, count=count)
        self._count_dropped(reason, count)

    def _count_dropped(self, reason: str, count: int) -> None:
        if self._on_changes_dropped is not None:
            self._on_changes_dropped(reason, count)

    # -- on the database thread ---------------------------------------------------------

    def _prepare(self) -> None:
        """Open the engine, upgrade the schema if asked, and check that it is at head."""
        if self._engine is None:
            self._engine = make_engine(
                self._database_url, statement_timeout_seconds=STATEMENT_TIMEOUT_SECONDS
            )
        if self._upgrade_schema:
            upgrade(self._database_url)
        with self._engine.connect() as connection:
            revision = current_revision(connection)
        expected = head_revision()
        if revision != expected:
            raise Unavailable(
                f"accounts schema is at {revision or 'nothing'}, expected {expected}: "
                "run `sessionmesh-db upgrade`"
            )

    def _write(self, batch: dict[SessionKey, Pending]) -> BatchOutcome:
        assert self._engine is not None
        return write_batch(self._engine, batch)

    def _dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
