"""The accounts database, written beside the call path.

Every ``record_*`` method only enqueues and returns at once: no call waits on the DB.
Each takes the owner ``epoch`` the change was made under; a row keeps the newest epoch that
wrote it (``owner_epoch``) and refuses changes made under an older one, so a stale owner's late
write cannot overwrite its successor's. A background task writes what is queued in batches
(one transaction per batch, activity coalesced per session), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from registry.accounts.engine import make_engine
from registry.accounts.models import (
    ID_LENGTH,
    PATH_LENGTH,
    PHONE_LENGTH,
    REASON_LENGTH,
    STATUS_LENGTH,
    URL_LENGTH,
    WhatsappAccount,
    utc_now,
)
from registry.accounts.schema import current_revision, head_revision
from registry.errors import Unavailable

_log = structlog.get_logger(__name__)

_SELECT_CHUNK = 500
"""Sessions per ``IN (...)`` query, under every backend's bound-parameter limit."""


@dataclass(frozen=True)
class _Placement:
    """The session was created on, or moved to, a node (applied in order)."""

    node_id: str
    node_url: str
    at: datetime
    phone_number: str | None = None
    storage_path: str | None = None
    is_creation: bool = False


@dataclass
class _Pending:
    """Everything queued for one session since the last flush."""

    workspace_id: str
    placements: list[_Placement] = field(default_factory=list)
    status: str | None = None
    disconnect: tuple[str, str, datetime] | None = None
    activity_at: datetime | None = None
    storage: tuple[int, datetime] | None = None
    epoch: int = 0
    """The newest owner epoch these changes were made under (0: no fence, always applied)."""

    def absorb(self, newer: _Pending) -> None:
        """Fold changes queued after this batch into it (used when a write is retried)."""
        self.workspace_id = newer.workspace_id
        self.epoch = max(self.epoch, newer.epoch)
        self.placements.extend(newer.placements)
        self.status = newer.status or self.status
        self.disconnect = newer.disconnect or self.disconnect
        if newer.activity_at is not None:
            self.activity_at = max(self.activity_at or newer.activity_at, newer.activity_at)
        self.storage = newer.storage or self.storage


def _clip(value: str, length: int) -> str:
    # A value longer than its column would fail the whole batch on every retry.
    return value[:length]


def _apply(row: WhatsappAccount, pending: _Pending, now: datetime) -> None:
    for placement in pending.placements:
        if placement.is_creation:
            if placement.phone_number:
                row.phone_number = _clip(placement.phone_number, PHONE_LENGTH)
            if placement.storage_path:
                row.session_storage_path = _clip(placement.storage_path, PATH_LENGTH)
        node_id = _clip(placement.node_id, ID_LENGTH)
        if row.assigned_node_id and row.assigned_node_id != node_id:
            row.previous_node_id = row.assigned_node_id
            row.instance_migration_count = (row.instance_migration_count or 0) + 1
            row.last_instance_migration_at = placement.at
        row.assigned_node_id = node_id
        row.assigned_node_url = _clip(placement.node_url, URL_LENGTH)
    if pending.status is not None:
        row.status = _clip(pending.status, STATUS_LENGTH)
    if pending.disconnect is not None:
        reason, details, disconnected_at = pending.disconnect
        row.disconnect_reason = _clip(reason, REASON_LENGTH)
        row.disconnect_details = details
        row.disconnected_at = disconnected_at
    if pending.activity_at is not None:
        row.last_activity_at = max(row.last_activity_at or pending.activity_at, pending.activity_at)
    if pending.storage is not None:
        row.session_file_size_bytes, row.session_storage_verified_at = pending.storage
    row.updated_at = now


class AccountStore:
    """Queue-fed writer of the ``whatsapp_accounts`` table.

    Changes are coalesced per session: one row write per session per flush, whatever the
    number of calls. A failed write is logged and retried at the next flush, never raised.
    """

    def __init__(self, database_url: str, *, flush_interval_seconds: float = 0.5) -> None:
        self._database_url = database_url
        self._flush_interval_seconds = flush_interval_seconds
        self._engine: Engine | None = None
        self._pending: dict[tuple[str, str], _Pending] = {}
        """Queued changes by (workspace_id, session_id): session ids are scoped by workspace."""
        self._write_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending_count(self) -> int:
        """Sessions with changes not yet committed."""
        return len(self._pending)

    async def start(self) -> None:
        """Open the engine (schema must be at head, see ``sessionmesh-db upgrade``) and start.

        Raises ``Unavailable`` if the schema is not at head. An unreachable database only logs:
        changes queue up and are written once it answers.
        """
        self._engine = await asyncio.to_thread(make_engine, self._database_url)
        try:
            revision = await asyncio.to_thread(self._read_revision)
        except SQLAlchemyError as error:
            _log.warning("accounts_db_unreachable", error=error)
        else:
            expected = head_revision()
            if revision != expected:
                await asyncio.to_thread(self._engine.dispose)
                self._engine = None
                raise Unavailable(
                    f"accounts schema is at {revision or 'nothing'}, expected {expected}: "
                    "run `sessionmesh-db upgrade`"
                )
        self._stopping.clear()
        self._task = asyncio.create_task(self._flush_periodically(), name="accounts-flush")

    async def stop(self) -> None:
        """Write everything queued, then close."""
        if self._task is not None:
            # Not cancel(): a flush in a worker thread would go on behind our back.
            self._stopping.set()
            await self._task
            self._task = None
        await self.flush()
        if self._pending:
            _log.error("accounts_changes_dropped", sessions=len(self._pending))
        if self._engine is not None:
            await asyncio.to_thread(self._engine.dispose)
            self._engine = None

    async def flush(self) -> None:
        """Write everything queued so far, and return when it is committed.

        If the write fails, the error is logged and the changes stay queued for the next flush.
        """
        async with self._write_lock:
            if not self._pending or self._engine is None:
                return
            batch, self._pending = self._pending, {}
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception as error:
                # Not only SQLAlchemyError: whatever fails, the changes must not be lost.
                _log.warning("accounts_flush_failed", sessions=len(batch), error=error)
                for key, newer in self._pending.items():
                    if key in batch:
                        batch[key].absorb(newer)
                    else:
                        batch[key] = newer
                self._pending = batch

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
    ) -> None:
        """A session was created on ``node_id`` (insert, or update if the row exists)."""
        self._queue(workspace_id, session_id, epoch).placements.append(
            _Placement(
                node_id=node_id,
                node_url=node_url,
                at=utc_now(),
                phone_number=phone_number or None,
                storage_path=storage_path or None,
                is_creation=True,
            )
        )

    def record_assignment(
        self, *, workspace_id: str, session_id: str, node_id: str, node_url: str, epoch: int = 0
    ) -> None:
        """The session now runs on ``node_id``. If it ran elsewhere before, that node becomes
        ``previous_node_id``, ``instance_migration_count`` grows by one and
        ``last_instance_migration_at`` is set; the same node again changes nothing."""
        self._queue(workspace_id, session_id, epoch).placements.append(
            _Placement(node_id=node_id, node_url=node_url, at=utc_now())
        )

    def record_status(
        self, *, workspace_id: str, session_id: str, status: str, epoch: int = 0
    ) -> None:
        """The session's state changed (``status``: the state name, lower case, e.g. ``ready``)."""
        self._queue(workspace_id, session_id, epoch).status = status

    def record_disconnect(
        self, *, workspace_id: str, session_id: str, reason: str, details: str, epoch: int = 0
    ) -> None:
        """The session disconnected or was deleted: sets ``disconnected_at``, reason, details."""
        self._queue(workspace_id, session_id, epoch).disconnect = (reason, details, utc_now())

    def record_activity(self, *, workspace_id: str, session_id: str, epoch: int = 0) -> None:
        """The session did something now; coalesced, written at the next flush."""
        self._queue(workspace_id, session_id, epoch).activity_at = utc_now()

    def record_storage(
        self, *, workspace_id: str, session_id: str, size_bytes: int, epoch: int = 0
    ) -> None:
        """The session's stored files were verified at ``size_bytes`` now."""
        self._queue(workspace_id, session_id, epoch).storage = (size_bytes, utc_now())

    def _queue(self, workspace_id: str, session_id: str, epoch: int) -> _Pending:
        key = (workspace_id, session_id)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(workspace_id=workspace_id)
        pending.workspace_id = workspace_id
        pending.epoch = max(pending.epoch, epoch)
        return pending

    async def _flush_periodically(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval_seconds):
                    await self._stopping.wait()
            await self.flush()

    def _read_revision(self) -> str | None:
        assert self._engine is not None
        with self._engine.connect() as connection:
            return current_revision(connection)

    def _write(self, batch: dict[tuple[str, str], _Pending]) -> None:
        """Apply ``batch`` in one transaction (runs in a worker thread)."""
        assert self._engine is not None
        now = utc_now()
        session_ids = sorted({session_id for _, session_id in batch})
        with Session(self._engine) as session, session.begin():
            rows: dict[tuple[str, str], WhatsappAccount] = {}
            for start in range(0, len(session_ids), _SELECT_CHUNK):
                chunk = session_ids[start : start + _SELECT_CHUNK]
                # FOR UPDATE: a handoff's old and new node may write one row at the same time.
                query = (
                    select(WhatsappAccount)
                    .where(col(WhatsappAccount.session_id).in_(chunk))
                    .with_for_update()
                )
                rows.update(
                    ((row.workspace_id, row.session_id), row) for row in session.exec(query)
                )
            for (workspace_id, session_id), pending in batch.items():
                row = rows.get((workspace_id, session_id))
                if row is None:
                    row = WhatsappAccount(
                        workspace_id=workspace_id,
                        session_id=session_id,
                        created_at=now,
                    )
                    session.add(row)
                if pending.epoch and pending.epoch < row.owner_epoch:
                    # A stale owner's late write: a newer owner already wrote this row.
                    _log.warning(
                        "accounts_stale_write_refused",
                        workspace_id=workspace_id,
                        session_id=session_id,
                        epoch=pending.epoch,
                        row_epoch=row.owner_epoch,
                    )
                    continue
                row.owner_epoch = max(row.owner_epoch, pending.epoch)
                row.workspace_id = pending.workspace_id
                _apply(row, pending, now)
