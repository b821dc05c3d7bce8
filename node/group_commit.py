"""Durable writes committed in groups: one flush of the file system for many files.

Every write of the session storage is durable before its caller goes on (an acknowledged
message is on disk). Done one by one, that is a flush per write, and a burst of sends or
creates queues behind the disk. :class:`GroupCommitWriter` takes every operation queued while
the previous group was being committed and commits them together, in order, in one worker
thread:

- **replace** (a whole file, atomically: ``meta.json``, ``credentials.json``, a compacted
  message log): written to a temp file in the same folder, renamed over the target after the
  first flush, so a crash leaves the old file or the new one, never half of one;
- **append** (a record at the end of a session's message log, through a file kept open):
  one ``write``; *durable* appends (an accepted message) are flushed with the group. Others
  (an ack's status, :meth:`GroupCommitWriter.append_later`) do not wait at all: they are
  queued, and written with the next group — which starts at once for a durable operation,
  or after ``LINGER_SECONDS`` when only such appends are queued, so the three acks of a
  message (and those of its neighbours) share one trip to the worker thread. A crash may lose
  them; a status is re-derived (the message is handed to the network again, which dedupes);
- **close** (a session stops): its log file is closed after the group's flush.

Per group: the temps and the appends are written, the file system is flushed once
(``syncfs`` on Linux, ``sync`` elsewhere) if anything in the group must be durable, the
renames are made, and the file system is flushed once more if there were any. Only then does
any operation of the group return. A group never holds an append to a file it also replaces
(the append waits for the next group), so appends always land in the file as renamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import enum
import itertools
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

MAX_GROUP_SIZE = 512
"""Most operations committed together (a larger backlog is committed in several groups)."""
_log = structlog.get_logger(__name__)

LINGER_SECONDS = 0.05
"""How long appends that need not be durable wait for company before a group is committed."""
MAX_OPEN_LOGS = 1024
"""Log files kept open for appends; beyond that the least recently used are closed."""
TEMP_PREFIX = "."
"""Temp files start with a dot, so listings of a session folder skip them."""


def _load_syncfs() -> Callable[[int], int] | None:
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    libc = ctypes.CDLL(library, use_errno=True)
    syncfs: Callable[[int], int] | None = getattr(libc, "syncfs", None)
    return syncfs


_SYNCFS = _load_syncfs()


def flush_file_system(root: Path) -> None:
    """Make every write so far to the file system holding ``root`` durable."""
    if _SYNCFS is None:
        os.sync()
        return
    descriptor = os.open(root, os.O_RDONLY)
    try:
        if _SYNCFS(descriptor) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"syncfs {root}: {os.strerror(number)}")
    finally:
        os.close(descriptor)


class OpKind(enum.Enum):
    """What one operation does to its file."""

    REPLACE = "replace"
    APPEND = "append"
    CLOSE = "close"


@dataclass
class _Op:
    kind: OpKind
    path: Path
    data: bytes
    is_durable: bool
    done: asyncio.Future[None]
    is_awaited: bool = True
    """False for :meth:`GroupCommitWriter.append_later`: nobody waits, a failure is logged."""
    temp_name: str = ""
    error: BaseException | None = field(default=None)


_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)


class _OpenLogs:
    """Append descriptors by path, least recently used first (touched by one thread at a
    time: groups are committed one after the other)."""

    def __init__(self) -> None:
        self._descriptors: OrderedDict[Path, int] = OrderedDict()

    def descriptor(self, path: Path, check: Callable[[Path], object]) -> int:
        descriptor = self._descriptors.pop(path, None)
        if descriptor is None:
            check(path)  # once per opening: an open descriptor keeps pointing where it did
            try:
                descriptor = os.open(path, _APPEND_FLAGS, 0o644)
            except FileNotFoundError:  # a new session's folder
                path.parent.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(path, _APPEND_FLAGS, 0o644)
        self._descriptors[path] = descriptor
        while len(self._descriptors) > MAX_OPEN_LOGS:
            _, oldest = self._descriptors.popitem(last=False)
            os.close(oldest)
        return descriptor

    def close(self, path: Path) -> None:
        descriptor = self._descriptors.pop(path, None)
        if descriptor is not None:
            os.close(descriptor)

    def close_all(self) -> None:
        while self._descriptors:
            _, descriptor = self._descriptors.popitem()
            os.close(descriptor)


_TEMP_TOKEN = secrets.token_hex(6)
"""Makes this process's temp names unique among the nodes sharing the storage."""
_temp_numbers = itertools.count()
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def _open_temp(op: _Op) -> int:
    # Named, not tempfile.mkstemp: its random names showed in profiles of create bursts, and
    # one process's groups are committed one at a time, so a counter is unique enough.
    op.temp_name = str(
        op.path.parent / f"{TEMP_PREFIX}{op.path.name}.{_TEMP_TOKEN}.{next(_temp_numbers)}.tmp"
    )
    try:
        return os.open(op.temp_name, _TEMP_FLAGS, 0o644)
    except FileNotFoundError:  # a new session's folder (or one deleted meanwhile)
        op.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(op.temp_name, _TEMP_FLAGS, 0o644)


def _write_temp(op: _Op) -> None:
    descriptor = _open_temp(op)
    try:
        view = memoryview(op.data)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)


def _discard_temp(op: _Op) -> None:
    if op.temp_name:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(op.temp_name)


def _append(op: _Op, logs: _OpenLogs, check: Callable[[Path], object]) -> None:
    descriptor = logs.descriptor(op.path, check)
    size = os.fstat(descriptor).st_size
    view = memoryview(op.data)
    try:
        while view:
            view = view[os.write(descriptor, view) :]
    except OSError:
        # A half-written record (a full disk) would glue onto the next one: take it back.
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, size)
        raise


def commit_group(
    ops: list[_Op], root: Path, check: Callable[[Path], object], logs: _OpenLogs
) -> None:
    """Commit ``ops`` in order (in a worker thread); each one's ``error`` says if it failed.

    ``check(path)`` runs first for every operation and may raise to refuse that one alone.
    """
    _write_all(ops, check, logs)
    _flush_and_rename(ops, root)
    for op in ops:
        if op.kind is not OpKind.APPEND and (op.kind is OpKind.CLOSE or op.error is None):
            # A replaced log is reopened by its next append; a closed one when asked again.
            logs.close(op.path)


def _write_all(ops: list[_Op], check: Callable[[Path], object], logs: _OpenLogs) -> None:
    for op in ops:
        try:
            if op.kind is OpKind.APPEND:
                _append(op, logs, check)
            else:
                check(op.path)
                if op.kind is OpKind.REPLACE:
                    _write_temp(op)
        except Exception as error:  # recorded on the operation, raised to its caller alone
            op.error = error
            _discard_temp(op)


def _flush_and_rename(ops: list[_Op], root: Path) -> None:
    pending = [op for op in ops if op.error is None]
    replaces = [op for op in pending if op.kind is OpKind.REPLACE]
    try:
        if replaces or any(op.is_durable for op in pending):
            flush_file_system(root)
        for op in replaces:
            try:
                os.replace(op.temp_name, op.path)
            except OSError as error:
                op.error = error
                _discard_temp(op)
        if replaces:
            flush_file_system(root)
    except OSError as error:
        # The flush failed: nothing of this group is known to be on disk.
        for op in pending:
            op.error = error
            _discard_temp(op)


class GroupCommitWriter:
    """Queues durable operations under ``root`` and commits them in groups, one group at a
    time (see the module docstring)."""

    def __init__(self, root: Path, *, check: Callable[[Path], object]) -> None:
        self._root = root
        self._check = check
        self._queue: list[_Op] = []
        self._logs = _OpenLogs()
        self._committer: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._last_op: _Op | None = None

    async def write(self, path: Path, data: bytes) -> None:
        """Replace ``path`` with ``data`` atomically and durably; returns once it is on disk."""
        await self._queue_op(OpKind.REPLACE, path, data, is_durable=True)

    async def append(self, path: Path, data: bytes) -> None:
        """Append ``data`` to ``path`` durably; returns once it is on disk."""
        await self._queue_op(OpKind.APPEND, path, data, is_durable=True)

    def append_later(self, path: Path, data: bytes) -> None:
        """Queue ``data`` to be appended to ``path`` with the next group, without waiting
        (nor making it durable): see the module docstring."""
        loop = asyncio.get_running_loop()
        op = _Op(OpKind.APPEND, path, data, False, loop.create_future(), is_awaited=False)
        self._queue.append(op)
        self._last_op = op
        if self._linger is None and (self._committer is None or self._committer.done()):
            self._linger = loop.call_later(LINGER_SECONDS, self._start_committing)

    async def flush(self) -> None:
        """Return once everything queued so far is written (before a read of the files)."""
        last = self._last_op
        if last is None or last.done.done():
            return
        self._start_committing()
        with contextlib.suppress(Exception):
            await asyncio.shield(last.done)  # a failure was the operation's own to report

    async def close(self, path: Path) -> None:
        """Make what was appended to ``path`` durable and close it."""
        await self._queue_op(OpKind.CLOSE, path, b"", is_durable=True)

    async def _queue_op(self, kind: OpKind, path: Path, data: bytes, *, is_durable: bool) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op = _Op(kind, path, data, is_durable, done)
        self._queue.append(op)
        self._last_op = op
        self._start_committing()
        await done

    def _start_committing(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._queue and (self._committer is None or self._committer.done()):
            self._committer = asyncio.create_task(self._commit_queued(), name="group-commit")

    def _next_group(self) -> list[_Op]:
        group: list[_Op] = []
        replaced: set[Path] = set()
        for op in self._queue[:MAX_GROUP_SIZE]:
            if op.kind is not OpKind.REPLACE and op.path in replaced:
                break  # it must land in the file as renamed: the next group
            if op.kind is OpKind.REPLACE:
                replaced.add(op.path)
            group.append(op)
        self._queue = self._queue[len(group) :]
        return group

    async def _commit_queued(self) -> None:
        while self._queue:
            group = self._next_group()
            try:
                await asyncio.to_thread(commit_group, group, self._root, self._check, self._logs)
            except BaseException as error:
                for op in group:
                    op.error = op.error or error
                raise
            finally:
                for op in group:
                    if op.done.done():
                        continue  # its caller gave up waiting
                    if op.error is None:
                        op.done.set_result(None)
                    elif not op.is_awaited:
                        _log.warning("append_failed", path=str(op.path), error=repr(op.error))
                        op.done.set_result(None)
                    elif isinstance(op.error, asyncio.CancelledError):
                        op.done.cancel()
                    else:
                        op.done.set_exception(op.error)
