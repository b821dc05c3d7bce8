"""Writing the accounts store's batches: on a thread of their own, one transaction per batch,
and a row the database refuses isolated from the others.

A batch fails for one of two kinds of reason. The database may be unreachable or not ready
(connection refused or lost, timeouts, locks, a missing table): then nothing is to blame but the
database, and the whole batch waits for the next attempt. Or one row's values are refused
(a constraint, a value the column or the driver cannot take): then the batch is split in halves,
each written the same way, down to the one row that fails alone — a few extra transactions,
and every other row lands.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlmodel import Session, col, select

from registry.accounts.changes import Pending
from registry.accounts.models import WhatsappAccount, utc_now

_log = structlog.get_logger(__name__)

_SELECT_CHUNK = 500
"""Sessions per ``IN (...)`` query, under every backend's bound-parameter limit."""

_CONFLICT_ATTEMPTS = 4
"""Tries of one transaction the database chose as a deadlock's victim: two nodes writing one
row at once (a handoff) is expected, and retrying at once is the standard remedy."""
_MYSQL_CONFLICTS = frozenset({1205, 1213})
"""MySQL/MariaDB: lock wait timeout, deadlock."""
_SQLSTATE_CONFLICTS = frozenset({"40001", "40P01"})
"""PostgreSQL: serialization failure, deadlock detected."""

SessionKey = tuple[str, str]
"""(workspace_id, session_id): session ids are scoped by workspace."""
_Result = TypeVar("_Result")
_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class _Last:
    """A call nobody waits for, run before the thread ends."""

    def __init__(self, function: Callable[[], None]) -> None:
        self._function = function

    def run(self) -> None:
        try:
            self._function()
        except Exception as error:
            _log.warning("accounts_thread_call_failed", error=error)


class DatabaseThread:
    """One daemon thread that runs the store's database calls, one at a time, in order.

    Not ``asyncio.to_thread``: the default executor's threads are joined when the process exits,
    so a call stuck on a blackholed database would hold the node's exit up, and it would take a
    thread the storage's file work needs meanwhile.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | _Last | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._busy = 0

    @property
    def is_busy(self) -> bool:
        """Whether a call is queued or running (one given up on by its caller included)."""
        return self._busy > 0

    async def run(self, function: Callable[[], _Result]) -> _Result:
        """Run ``function`` on the thread and return its result. Cancelling the caller does not
        stop the call: it runs to its end, and its result is dropped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()
        self._busy += 1
        self._jobs.put((function, future, loop))
        return await future

    def close(self, *, last: Callable[[], None] | None = None) -> None:
        """End the thread after the calls queued so far, and ``last`` if given (a call stuck
        on the database runs it whenever it ends; nobody waits for it)."""
        self._jobs.put(None if last is None else _Last(last))
        if last is not None:
            self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            if isinstance(job, _Last):
                job.run()
                continue
            function, future, loop = job
            try:
                outcome: tuple[bool, Any] = (True, function())
            except BaseException as error:  # handed to the waiting coroutine, whatever it is
                outcome = (False, error)
            try:
                loop.call_soon_threadsafe(self._settle, future, outcome)
            except RuntimeError:
                return  # the loop is closed: nobody waits for anything any more

    def _settle(self, future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
        self._busy -= 1
        if future.cancelled():
            return
        is_result, value = outcome
        if is_result:
            future.set_result(value)
        else:
            future.set_exception(value)


def is_row_error(error: BaseException) -> bool:
    """Whether ``error`` is about the values written — some row is to blame — rather than about
    the database being unreachable or not ready (see the module docstring)."""
    if isinstance(error, DataError | IntegrityError):
        return True
    if isinstance(error, DBAPIError):
        return False  # operational, programming (no such table), internal: the database's
    if isinstance(error, StatementError):
        return True  # a parameter could not be processed
    if isinstance(error, SQLAlchemyError):
        return False
    # A value the driver cannot encode (UnicodeEncodeError) or a bug in applying one row.
    return isinstance(error, Exception) and not isinstance(error, OSError)


@dataclass
class BatchOutcome:
    """What became of one batch."""

    written: int = 0
    """Sessions whose rows were committed."""
    refused: dict[SessionKey, tuple[Pending, BaseException]] = field(default_factory=dict)
    """Sessions whose row failed on its own, with why."""
    unwritten: dict[SessionKey, Pending] = field(default_factory=dict)
    """Sessions not written because the database failed: they wait for the next attempt."""
    database_error: BaseException | None = None
    """Why the database failed, if it did."""


def write_batch(engine: Engine, batch: dict[SessionKey, Pending]) -> BatchOutcome:
    """Write ``batch`` in one transaction; if a row is to blame, isolate it (runs on the
    database thread)."""
    outcome = BatchOutcome()
    _write_isolating(engine, list(batch), batch, outcome)
    return outcome


def is_lock_conflict(error: BaseException) -> bool:
    """Whether the database rolled the transaction back to break a deadlock or a lock wait:
    nothing is wrong with it or with the rows, and the same transaction may run again."""
    if not isinstance(error, DBAPIError):
        return False
    original = error.orig
    if getattr(original, "sqlstate", None) in _SQLSTATE_CONFLICTS:
        return True
    arguments: tuple[object, ...] = getattr(original, "args", ())
    return bool(arguments) and arguments[0] in _MYSQL_CONFLICTS


def _write_retrying_conflicts(engine: Engine, batch: dict[SessionKey, Pending]) -> None:
    for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
        try:
            _write(engine, batch)
            return
        except DBAPIError as error:
            if attempt == _CONFLICT_ATTEMPTS or not is_lock_conflict(error):
                raise
            _log.info("accounts_lock_conflict_retried", attempt=attempt, sessions=len(batch))


def _write_isolating(
    engine: Engine, keys: list[SessionKey], batch: dict[SessionKey, Pending], outcome: BatchOutcome
) -> None:
    if outcome.database_error is not None:
        outcome.unwritten.update((key, batch[key]) for key in keys)
        return
    try:
        _write_retrying_conflicts(engine, {key: batch[key] for key in keys})
    except Exception as error:
        if not is_row_error(error):
            outcome.database_error = error
            outcome.unwritten.update((key, batch[key]) for key in keys)
        elif len(keys) == 1:
            outcome.refused[keys[0]] = (batch[keys[0]], error)
        else:
            middle = len(keys) // 2
            _write_isolating(engine, keys[:middle], batch, outcome)
            _write_isolating(engine, keys[middle:], batch, outcome)
    else:
        outcome.written += len(keys)


def _write(engine: Engine, batch: dict[SessionKey, Pending]) -> None:
    """Apply ``batch`` in one transaction."""
    now = utc_now()
    session_ids = sorted({session_id for _, session_id in batch})
    with Session(engine) as session, session.begin():
        rows: dict[SessionKey, WhatsappAccount] = {}
        for start in range(0, len(session_ids), _SELECT_CHUNK):
            chunk = session_ids[start : start + _SELECT_CHUNK]
            # FOR UPDATE: a handoff's old and new node may write one row at the same time.
            query = (
                select(WhatsappAccount)
                .where(col(WhatsappAccount.session_id).in_(chunk))
                .with_for_update()
            )
            rows.update(((row.workspace_id, row.session_id), row) for row in session.exec(query))
        for (workspace_id, session_id), pending in batch.items():
            row = rows.get((workspace_id, session_id))
            if row is None:
                row = WhatsappAccount(
                    workspace_id=workspace_id, session_id=session_id, created_at=now
                )
                session.add(row)
            if pending.epoch and pending.epoch < row.owner_epoch:
                # A stale owner's late write: a newer owner already wrote this row.
                _log.info(
                    "accounts_stale_write_refused",
                    workspace_id=workspace_id,
                    session_id=session_id,
                    epoch=pending.epoch,
                    row_epoch=row.owner_epoch,
                )
                continue
            pending.apply(row, now)
