"""Shared session storage: one folder per session, every write atomic and durable.

::

    <root>/workspace_<workspace_id>/<session_id>/
        meta.json          SessionMeta (written when a node opens, stops or deletes it)
        credentials.json   what the driver needs to reconnect without a QR
        messages.log       the session's accepted messages and their statuses, appended
                           (see node.message_log)
        events.log         the session's events, numbered, appended (see node.event_log)
        webhooks.cursor    the last event its webhook delivery confirmed (node.webhooks)
        webhooks-dead.log  the events the webhook retries gave up on, appended

Ids are checked with ``registry.ids.validate_id`` before any path is built, and the
resolved path must stay under the root, so no id can reach outside the tree. Whole files are
replaced atomically (temp file, flush, rename, flush); the message log is appended to; writes
queued together share a trip to the worker thread (:mod:`node.group_commit`). A write that
must be durable returns only once it is on disk. All file I/O runs in this storage's own
worker threads, never on the event loop nor in the default pool, and every call is bounded by
``timeout_seconds``: past it the caller gets ``StorageStalled`` and ``on_stall`` is told (a
hung NFS mount must not hold the node's slots nor its shutdown). Disk errors become
:mod:`node.storage_errors`; a record that does not parse becomes :class:`CorruptRecord`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from node import event_log, message_log
from node.commit_io import FileTicket, fsync_folder
from node.daemon_pool import DaemonThreadPool
from node.events import SessionEvent
from node.group_commit import MAX_QUEUED_OPS, GroupCommitWriter
from node.storage_errors import LeaseLapsed, StorageStalled, storage_errors
from node.storage_files import (
    CorruptRecord,
    confined,
    encode,
    json_files,
    meta_of,
    read_json,
    refuse_if_newer,
    remove_legacy_outbox,
)
from node.storage_records import OutboxEntry, SessionMeta
from registry import InvalidInput, MessageStatus, validate_id

__all__ = [
    "WEBHOOK_CURSOR",
    "WEBHOOK_DEAD_LETTERS",
    "CorruptRecord",
    "FileTicket",
    "OutboxEntry",
    "SessionMeta",
    "SessionStorage",
]

DEFAULT_TIMEOUT_SECONDS = 10.0
"""How long one storage call may take before its caller gets ``StorageStalled``."""
STORAGE_THREADS = 8
"""Worker threads of one storage (reads, scans and the group commits)."""


_WORKSPACE_PREFIX = "workspace_"
_META = "meta.json"
_CREDENTIALS = "credentials.json"
_LEGACY_OUTBOX = message_log.LEGACY_OUTBOX
WEBHOOK_CURSOR = "webhooks.cursor"
WEBHOOK_DEAD_LETTERS = "webhooks-dead.log"
WEBHOOK_FILES = (WEBHOOK_CURSOR, WEBHOOK_DEAD_LETTERS)
_MAX_CACHED_LOG_PATHS = 65_536


def _require(may_write: Callable[[], bool]) -> None:
    if not may_write():
        raise LeaseLapsed("this node's lease lapsed before the write: nothing was written")


class SessionStorage:
    """The session tree under ``root`` (a local folder, or NFS/EFS shared by every node)."""

    def __init__(
        self,
        root: Path | str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        on_stall: Callable[[], None] = lambda: None,
        name: str = "",
        max_queued_writes: int = MAX_QUEUED_OPS,
        on_dropped: Callable[[], None] = lambda: None,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._root = Path(root).resolve()
        self._timeout_seconds = timeout_seconds
        self._on_stall = on_stall
        # Named after the node, so a thread dump (or a test's failing disk) tells them apart.
        prefix = f"storage-{name}" if name else "storage"
        self._executor = DaemonThreadPool(STORAGE_THREADS, thread_name_prefix=prefix)
        self._writer = GroupCommitWriter(
            self._root,
            check=self._confine,
            executor=self._executor,
            timeout_seconds=timeout_seconds,
            on_stall=on_stall,
            max_queued=max_queued_writes,
            on_dropped=on_dropped,
            on_refused=on_refused,
        )
        self._log_paths: dict[tuple[str, str], Path] = {}
        self._session_dirs: dict[tuple[str, str], Path] = {}

    def _confine(self, path: Path) -> Path:
        return confined(path, self._root)

    async def _run(self, action: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on a storage thread, bounded in time, disk errors mapped."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        try:
            async with asyncio.timeout(self._timeout_seconds):
                with storage_errors(action):
                    return await future
        except TimeoutError:
            self._on_stall()
            raise StorageStalled(
                f"cannot {action}: storage did not answer within {self._timeout_seconds:g} s"
            ) from None

    def close(self) -> None:
        """Let the storage threads go (one stuck in a hung mount is left behind)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def root(self) -> Path:
        """The absolute root of the tree."""
        return self._root

    def workspace_dir(self, workspace_id: str) -> Path:
        """The folder of one workspace. Raises ``InvalidInput`` for a bad id."""
        validate_id(workspace_id, field="workspace_id")
        return self._inside(self._root / f"{_WORKSPACE_PREFIX}{workspace_id}")

    def session_dir(self, workspace_id: str, session_id: str) -> Path:
        """The folder of one session. Raises ``InvalidInput`` for a bad id."""
        key = (workspace_id, session_id)
        folder = self._session_dirs.get(key)
        if folder is None:
            validate_id(session_id, field="session_id")
            folder = self._inside(self.workspace_dir(workspace_id) / session_id)
            if len(self._session_dirs) >= _MAX_CACHED_LOG_PATHS:
                self._session_dirs.clear()
            self._session_dirs[key] = folder  # validated: every later call is a lookup
        return folder

    def _inside(self, path: Path) -> Path:
        # Belt and braces: the id charset already forbids '/', '..' and NUL. This check is
        # lexical (no I/O on the loop); symlinks are checked again where files are touched.
        normal = Path(os.path.normpath(path))
        if not normal.is_relative_to(self._root):
            raise InvalidInput(f"path {path} leaves the storage root")
        return normal

    def _log_file(self, workspace_id: str, session_id: str) -> Path:
        # Cached: every send and ack of a session appends to the same file.
        key = (workspace_id, session_id)
        path = self._log_paths.get(key)
        if path is None:
            path = self.session_dir(workspace_id, session_id) / message_log.LOG_NAME
            if len(self._log_paths) >= _MAX_CACHED_LOG_PATHS:
                self._log_paths.clear()
            self._log_paths[key] = path
        return path

    async def save_meta(self, meta: SessionMeta, *, fence_epoch: int | None = None) -> None:
        """Write ``meta.json`` atomically. With ``fence_epoch``, the write is refused
        (``StaleWrite``) when the stored meta names a newer owner epoch — checked in the
        worker thread just before the rename, so a writer paused after its own check cannot
        overwrite a newer owner's meta."""
        path = self.session_dir(meta.workspace_id, meta.session_id) / _META
        precondition = None
        if fence_epoch is not None:
            precondition = functools.partial(refuse_if_newer, path, self._root, fence_epoch)
        with storage_errors(f"write {meta.workspace_id}/{meta.session_id} meta"):
            await self._writer.write(path, encode(asdict(meta)), precondition=precondition)

    async def load_meta(self, workspace_id: str, session_id: str) -> SessionMeta | None:
        """The stored meta, or None if the session was never stored. Raises
        ``CorruptRecord`` for a meta that does not parse."""
        path = self.session_dir(workspace_id, session_id) / _META
        action = f"read {workspace_id}/{session_id} meta"
        raw = await self._run(action, read_json, path, self._root)
        return meta_of(raw, path)

    async def save_credentials(
        self, workspace_id: str, session_id: str, credentials: dict[str, Any]
    ) -> None:
        """Write ``credentials.json`` atomically."""
        path = self.session_dir(workspace_id, session_id) / _CREDENTIALS
        with storage_errors(f"write {workspace_id}/{session_id} credentials"):
            await self._writer.write(path, encode(credentials))

    async def load_credentials(self, workspace_id: str, session_id: str) -> dict[str, Any] | None:
        """The stored credentials, or None if the session was never paired."""
        path = self.session_dir(workspace_id, session_id) / _CREDENTIALS
        action = f"read {workspace_id}/{session_id} credentials"
        raw = await self._run(action, read_json, path, self._root)
        if raw is not None and not isinstance(raw, dict):
            raise CorruptRecord(f"{path.name} is not an object")
        return raw

    async def delete_credentials(self, workspace_id: str, session_id: str) -> None:
        """Forget the credentials (after a logout); no error if there are none."""
        path = self.session_dir(workspace_id, session_id) / _CREDENTIALS

        def remove() -> None:
            confined(path, self._root)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                fsync_folder(path.parent)

        await self._run(f"delete {workspace_id}/{session_id} credentials", remove)

    async def append_accepted(
        self,
        workspace_id: str,
        session_id: str,
        entry: OutboxEntry,
        *,
        may_write: Callable[[], bool] | None = None,
        ticket: FileTicket | None = None,
    ) -> None:
        """Append an accepted message to the session's log; returns once it is on disk.
        ``may_write`` is asked in the worker thread just before the record is written: when
        it says no (this node's lease lapsed meanwhile), nothing is written and
        ``LeaseLapsed`` is raised. ``ticket`` notes the file it went to (for
        :meth:`withdraw_accepted`)."""
        validate_id(entry.client_message_id, field="client_message_id")
        path = self._log_file(workspace_id, session_id)
        precondition = None if may_write is None else functools.partial(_require, may_write)
        with storage_errors(f"accept a message of {workspace_id}/{session_id}"):
            await self._writer.append(
                path, message_log.accepted_record(entry), precondition=precondition, ticket=ticket
            )

    def withdraw_accepted(
        self, workspace_id: str, session_id: str, entry: OutboxEntry, ticket: FileTicket
    ) -> None:
        """Queue the withdrawal of ``entry``'s record (its send was answered with an error),
        into the file the record went to only (see :mod:`node.message_log`)."""
        path = self._log_file(workspace_id, session_id)
        record = message_log.withdrawal_record(entry.client_message_id, entry.seq)
        self._writer.append_later(path, record, bound_to=ticket)

    def append_status(
        self, workspace_id: str, session_id: str, client_message_id: str, status: MessageStatus
    ) -> None:
        """Queue a message's new status for the log, without waiting: written with the next
        group of writes, on disk with the next flush. A status lost in a crash only means the
        message is handed to the network again, which dedupes it by id."""
        path = self._log_file(workspace_id, session_id)
        record = message_log.status_record(client_message_id, status)
        self._writer.append_later(path, record)

    async def rewrite_messages(
        self,
        workspace_id: str,
        session_id: str,
        entries: list[OutboxEntry],
        *,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        """Replace the session's log with one holding just ``entries`` (compacted), durably;
        then retire the per-message files of the old format, if any. ``may_write`` is asked
        in the worker thread just before the rename: when it says no (this node's lease
        lapsed, a newer owner may have the log), nothing is replaced and ``LeaseLapsed`` is
        raised."""
        path = self._log_file(workspace_id, session_id)
        precondition = None if may_write is None else functools.partial(_require, may_write)
        with storage_errors(f"rewrite {workspace_id}/{session_id} messages"):
            await self._writer.write(
                path, message_log.compacted(entries), precondition=precondition
            )
        legacy = self.session_dir(workspace_id, session_id) / _LEGACY_OUTBOX
        action = f"retire {workspace_id}/{session_id} old outbox"
        await self._run(action, remove_legacy_outbox, legacy, self._root)

    async def close_messages(self, workspace_id: str, session_id: str) -> None:
        """Make everything appended to the session's log durable and close it (it stops)."""
        with storage_errors(f"close {workspace_id}/{session_id} messages"):
            await self._writer.close(self._log_file(workspace_id, session_id))

    async def load_outbox(self, workspace_id: str, session_id: str) -> list[OutboxEntry]:
        """Every message of the session, in ``seq`` order: its log, and the per-message files
        of the old format if the folder still has them."""
        entries, _ = await self._read_messages(workspace_id, session_id)
        return entries

    async def open_messages(
        self, workspace_id: str, session_id: str, *, may_write: Callable[[], bool] | None = None
    ) -> list[OutboxEntry]:
        """Every message of the session (see :meth:`load_outbox`), for a node that starts
        running it: a log that exists is rewritten compacted first, so this node appends to a
        file of its own (a torn last line, or a former owner's late append, cannot mix with
        its records), settled messages past the dedupe window are forgotten and the old format is
        retired. ``may_write``: as for :meth:`rewrite_messages`."""
        entries, has_files = await self._read_messages(workspace_id, session_id)
        if has_files:
            entries = message_log.retained(entries, now_unix=time.time())
            await self.rewrite_messages(workspace_id, session_id, entries, may_write=may_write)
        return entries

    async def _read_messages(
        self, workspace_id: str, session_id: str
    ) -> tuple[list[OutboxEntry], bool]:
        path = self._log_file(workspace_id, session_id)
        await self._writer.flush()  # this node's queued statuses land before the read
        legacy = self.session_dir(workspace_id, session_id) / _LEGACY_OUTBOX

        def read_all() -> tuple[list[OutboxEntry], bool]:
            confined(path, self._root)
            try:
                data: bytes | None = path.read_bytes()
            except FileNotFoundError:
                data = None
            logged = message_log.replay(data) if data is not None else {}
            legacy_files = json_files(legacy)
            old = [read_json(file, self._root) for file in legacy_files]
            entries = message_log.merge(logged, (raw for raw in old if raw is not None))
            return entries, data is not None or bool(legacy_files)

        return await self._run(  # type: ignore[no-any-return]
            f"read {workspace_id}/{session_id} messages", read_all
        )

    def _events_file(self, workspace_id: str, session_id: str) -> Path:
        return self.session_dir(workspace_id, session_id) / event_log.LOG_NAME

    async def append_event(
        self,
        workspace_id: str,
        session_id: str,
        event: SessionEvent,
        *,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        """Append a numbered event to the session's event log; returns once it is on disk.
        ``may_write`` as for :meth:`append_accepted`."""
        path = self._events_file(workspace_id, session_id)
        precondition = None if may_write is None else functools.partial(_require, may_write)
        with storage_errors(f"log an event of {workspace_id}/{session_id}"):
            await self._writer.append(
                path, event_log.event_record(event), precondition=precondition
            )

    def queue_event(
        self,
        workspace_id: str,
        session_id: str,
        event: SessionEvent,
        *,
        may_write: Callable[[], bool] | None = None,
    ) -> Awaitable[None]:
        """Queue the append of a numbered event now, in order with every write queued before
        it; the result, awaited, returns once it is on disk (as :meth:`append_event`)."""
        path = self._events_file(workspace_id, session_id)
        precondition = None if may_write is None else functools.partial(_require, may_write)
        what = f"log an event of {workspace_id}/{session_id}"
        with storage_errors(what):
            written = self._writer.queue_append(
                path, event_log.event_record(event), precondition=precondition
            )

        async def on_disk() -> None:
            with storage_errors(what):
                await written

        return on_disk()

    async def load_events(self, workspace_id: str, session_id: str) -> list[SessionEvent]:
        """The events in the session's log, in order (none if it has no log)."""
        path = self._events_file(workspace_id, session_id)
        await self._writer.flush()

        def read() -> list[SessionEvent]:
            confined(path, self._root)
            try:
                return event_log.parse_events(path.read_bytes())
            except FileNotFoundError:
                return []

        return await self._run(  # type: ignore[no-any-return]
            f"read {workspace_id}/{session_id} events", read
        )

    async def open_events(
        self, workspace_id: str, session_id: str, *, may_write: Callable[[], bool] | None = None
    ) -> list[SessionEvent]:
        """The session's events as a compacted log keeps them (:func:`node.event_log.retained`),
        the log rewritten so: for a node that starts running the session (it then appends to
        a file of its own), and whenever the log has grown enough. ``may_write``: as for
        :meth:`rewrite_messages`."""
        events = event_log.retained(
            await self.load_events(workspace_id, session_id), now_unix=time.time()
        )
        if events:
            path = self._events_file(workspace_id, session_id)
            precondition = None if may_write is None else functools.partial(_require, may_write)
            with storage_errors(f"compact {workspace_id}/{session_id} events"):
                await self._writer.write(
                    path, event_log.compacted(events), precondition=precondition
                )
        return events

    async def close_events(self, workspace_id: str, session_id: str) -> None:
        """Make the session's event log durable and close it (the session stops)."""
        with storage_errors(f"close {workspace_id}/{session_id} events"):
            await self._writer.close(self._events_file(workspace_id, session_id))

    def _webhook_file(self, workspace_id: str, session_id: str, name: str) -> Path:
        if name not in WEBHOOK_FILES:
            raise InvalidInput(f"{name!r} is not a webhook file of a session")
        return self.session_dir(workspace_id, session_id) / name

    async def read_webhook_file(self, workspace_id: str, session_id: str, name: str) -> bytes:
        """A webhook file of the session (one of ``WEBHOOK_FILES``); empty if it has none."""
        path = self._webhook_file(workspace_id, session_id, name)
        await self._writer.flush()

        def read() -> bytes:
            confined(path, self._root)
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return b""

        return await self._run(  # type: ignore[no-any-return]
            f"read {workspace_id}/{session_id} {name}", read
        )

    async def write_webhook_file(
        self,
        workspace_id: str,
        session_id: str,
        name: str,
        data: bytes,
        *,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        """Replace a webhook file of the session atomically and durably."""
        path = self._webhook_file(workspace_id, session_id, name)
        precondition = None if may_write is None else functools.partial(_require, may_write)
        with storage_errors(f"write {workspace_id}/{session_id} {name}"):
            await self._writer.write(path, data, precondition=precondition)

    async def append_webhook_file(
        self,
        workspace_id: str,
        session_id: str,
        name: str,
        data: bytes,
        *,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        """Append to a webhook file of the session durably."""
        path = self._webhook_file(workspace_id, session_id, name)
        precondition = None if may_write is None else functools.partial(_require, may_write)
        with storage_errors(f"append to {workspace_id}/{session_id} {name}"):
            await self._writer.append(path, data, precondition=precondition)

    async def list_sessions(self, workspace_id: str) -> list[str]:
        """Every session of a workspace that has a ``meta.json``, sorted."""
        directory = self.workspace_dir(workspace_id)

        def scan() -> list[str]:
            if not directory.is_dir():
                return []
            return sorted(
                entry.name
                for entry in directory.iterdir()
                if entry.is_dir() and (entry / _META).is_file()
            )

        return await self._run(f"list {workspace_id}", scan)  # type: ignore[no-any-return]

    async def size_bytes(self, workspace_id: str, session_id: str) -> int:
        """Total size of the session's files."""
        directory = self.session_dir(workspace_id, session_id)

        def measure() -> int:
            total = 0
            for dirpath, _, filenames in os.walk(directory):
                for name in filenames:
                    with contextlib.suppress(FileNotFoundError):
                        total += os.stat(os.path.join(dirpath, name)).st_size
            return total

        return await self._run(  # type: ignore[no-any-return]
            f"measure {workspace_id}/{session_id}", measure
        )
