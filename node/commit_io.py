"""The worker-thread half of group commit: writing a group's files, making them durable, and
taking back what did not make it (:mod:`node.group_commit` is the asyncio half).

Durability is proven per file, not trusted to a whole-file-system flush: ``syncfs`` (before
Linux 5.8) reports success on a writeback error, and an error already reported through
another descriptor is not reported again. So, per group:

1. every operation is written: appends through the log's open descriptor, replacements to a
   temp file that is ``fsync``-ed before it is closed;
2. every log with a durable append (or being closed) is ``fdatasync``-ed through the
   descriptor that wrote it; when that fails, nothing appended to it in this group is known
   to be on disk, so those records are taken back (``ftruncate`` to where the group started)
   and their operations fail — a send that was not acknowledged must never be delivered
   later from a record that reached the disk after all;
3. the temps are renamed over their targets;
4. every folder whose entries changed (a rename, a new log file, a new folder) is
   ``fsync``-ed, once.

An operation fails alone where it can (a refused path, a failed rename, a failed flush of its
own file); a failed folder flush fails the operations under it.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_OPEN_LOGS = 1024
"""Log files kept open for appends; beyond that the least recently used are closed."""
TEMP_PREFIX = "."
"""Temp files start with a dot, so listings of a session folder skip them."""

_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
_TEMP_TOKEN = secrets.token_hex(6)
"""Makes this process's temp names unique among the nodes sharing the storage."""
_temp_numbers = itertools.count()


class OpKind(enum.Enum):
    """What one operation does to its file."""

    REPLACE = "replace"
    APPEND = "append"
    CLOSE = "close"


@dataclass
class Op:
    """One queued operation and, once committed, its outcome."""

    kind: OpKind
    path: Path
    data: bytes
    is_durable: bool
    done: Any
    """The future its caller awaits (set by the asyncio half)."""
    is_awaited: bool = True
    """False for statuses appended without waiting: a failure is logged, not raised."""
    precondition: Callable[[], None] | None = None
    """Runs in the worker thread just before an append's write or a replacement's rename;
    may raise to refuse it."""
    is_abandoned: bool = False
    """Its caller stopped waiting (the storage stalled): its outcome is no one's answer."""
    temp_name: str = ""
    offset: int | None = None
    """Where an append started in its file (to take it back)."""
    ticket: FileTicket | None = None
    """An append: notes the file (device, inode) the record went to."""
    bound_to: FileTicket | None = None
    """An append written only into the file ``bound_to`` names (skipped if the path now
    names another file, or the bound record was never written)."""
    error: BaseException | None = field(default=None)


@dataclass
class FileTicket:
    """Which file an append went to: a later record about it (a withdrawal) must reach that
    same file, never a newer one renamed over the path since (another owner's)."""

    file_id: tuple[int, int] | None = None
    """``(st_dev, st_ino)`` once the record is written; None while it is not."""


def fsync_file(descriptor: int) -> None:
    """``fsync`` (a separate function: the test kit's failing disk replaces it)."""
    os.fsync(descriptor)


def fdatasync_file(descriptor: int) -> None:
    """``fdatasync`` (a separate function: the test kit's failing disk replaces it)."""
    os.fdatasync(descriptor)


def fsync_folder(folder: Path) -> None:
    """Make ``folder``'s entries (renames, new files) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fsync_file(descriptor)
    finally:
        os.close(descriptor)


class OpenLogs:
    """Append descriptors by path, least recently used first (touched by one thread at a
    time: groups are committed one after the other). Trimmed between groups, never during
    one: a descriptor written in a group is the one its flush goes through."""

    def __init__(self) -> None:
        self._descriptors: OrderedDict[Path, int] = OrderedDict()

    def get(self, path: Path) -> int | None:
        """The open descriptor of ``path``, if any."""
        return self._descriptors.get(path)

    def descriptor(
        self, path: Path, check: Callable[[Path], object], changed_folders: set[Path]
    ) -> int:
        """The descriptor to append to ``path`` (opened, and its folder noted, if new)."""
        descriptor = self._descriptors.pop(path, None)
        if descriptor is None:
            check(path)  # once per opening: an open descriptor keeps pointing where it did
            ensure_folder(path.parent, changed_folders)
            descriptor = os.open(path, _APPEND_FLAGS, 0o644)
            changed_folders.add(path.parent)  # the file may be new: its entry must last
        self._descriptors[path] = descriptor
        return descriptor

    def close(self, path: Path) -> None:
        """Close ``path``'s descriptor, if open."""
        descriptor = self._descriptors.pop(path, None)
        if descriptor is not None:
            os.close(descriptor)

    def trim(self) -> None:
        """Close the least recently used descriptors beyond ``MAX_OPEN_LOGS``."""
        while len(self._descriptors) > MAX_OPEN_LOGS:
            _, oldest = self._descriptors.popitem(last=False)
            os.close(oldest)


def ensure_folder(folder: Path, changed_folders: set[Path]) -> None:
    """Create ``folder`` and its missing parents, noting every parent that got a new entry."""
    missing: list[Path] = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):
            created.mkdir()
        changed_folders.add(created.parent)


def commit_group(ops: list[Op], check: Callable[[Path], object], logs: OpenLogs) -> None:
    """Commit ``ops`` in order (in a worker thread); each one's ``error`` says if it failed.

    ``check(path)`` runs first for every operation and may raise to refuse that one alone.
    """
    changed_folders: set[Path] = set()
    for op in ops:
        try:
            if op.kind is OpKind.APPEND:
                _append(op, logs, check, changed_folders)
            else:
                check(op.path)
                if op.kind is OpKind.REPLACE:
                    _write_temp(op, changed_folders)
        except Exception as error:  # recorded on the operation, raised to its caller alone
            op.error = error
            _discard_temp(op)
    _flush_logs(ops, logs)
    _rename(ops, changed_folders)
    _flush_folders(ops, changed_folders)
    for op in ops:
        if op.kind is not OpKind.APPEND and (op.kind is OpKind.CLOSE or op.error is None):
            # A replaced log is reopened by its next append; a closed one when asked again.
            logs.close(op.path)
    logs.trim()


def _append(
    op: Op, logs: OpenLogs, check: Callable[[Path], object], changed_folders: set[Path]
) -> None:
    # The descriptor first, the precondition after: a writer paused between the two writes
    # into the file it opened while the check still held (a newer owner renames its own file
    # over the path only once this node's lease is gone, so a late write lands in a file no
    # one reads), never into a file opened after a newer owner took the path over.
    descriptor = logs.descriptor(op.path, check, changed_folders)
    stat = os.fstat(descriptor)
    if op.bound_to is not None and op.bound_to.file_id != (stat.st_dev, stat.st_ino):
        return  # the bound record never reached this file: nothing here to speak of
    if op.precondition is not None:
        op.precondition()  # as late as it can be: just before the record reaches the file
    op.offset = stat.st_size
    view = memoryview(op.data)
    try:
        while view:
            view = view[os.write(descriptor, view) :]
    except OSError:
        # A half-written record (a full disk) would glue onto the next one: take it back.
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, op.offset)
        raise
    if op.ticket is not None:
        op.ticket.file_id = (stat.st_dev, stat.st_ino)


def _write_temp(op: Op, changed_folders: set[Path]) -> None:
    ensure_folder(op.path.parent, changed_folders)
    # Named, not tempfile.mkstemp: its random names showed in profiles of create bursts, and
    # one process's groups are committed one at a time, so a counter is unique enough.
    op.temp_name = str(
        op.path.parent / f"{TEMP_PREFIX}{op.path.name}.{_TEMP_TOKEN}.{next(_temp_numbers)}.tmp"
    )
    descriptor = os.open(op.temp_name, _TEMP_FLAGS, 0o644)
    try:
        view = memoryview(op.data)
        while view:
            view = view[os.write(descriptor, view) :]
        fsync_file(descriptor)
    finally:
        os.close(descriptor)


def _discard_temp(op: Op) -> None:
    if op.temp_name:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(op.temp_name)


def _by_path(ops: Iterable[Op]) -> dict[Path, list[Op]]:
    grouped: dict[Path, list[Op]] = {}
    for op in ops:
        grouped.setdefault(op.path, []).append(op)
    return grouped


def _flush_logs(ops: list[Op], logs: OpenLogs) -> None:
    """``fdatasync`` every log with a durable append or a close in this group."""
    pending = [op for op in ops if op.error is None and op.kind is not OpKind.REPLACE]
    for path, path_ops in _by_path(pending).items():
        descriptor = logs.get(path)
        if descriptor is None or not any(op.is_durable for op in path_ops):
            continue
        try:
            fdatasync_file(descriptor)
        except OSError as error:
            offsets = [op.offset for op in path_ops if op.offset is not None]
            if offsets:  # not known to be on disk: take the group's records back
                with contextlib.suppress(OSError):
                    os.ftruncate(descriptor, min(offsets))
            for op in path_ops:
                op.error = error
            logs.close(path)  # its state is unknown: reopened by the next append


def _rename(ops: list[Op], changed_folders: set[Path]) -> None:
    for op in ops:
        if op.error is not None or op.kind is not OpKind.REPLACE:
            continue
        try:
            if op.precondition is not None:
                op.precondition()
            os.replace(op.temp_name, op.path)
        except Exception as error:  # a failed rename, or a refused precondition
            op.error = error
            _discard_temp(op)
            continue
        changed_folders.add(op.path.parent)


def _flush_folders(ops: list[Op], changed_folders: set[Path]) -> None:
    for folder in sorted(changed_folders, key=lambda path: len(path.parts), reverse=True):
        try:
            fsync_folder(folder)
        except OSError as error:
            for op in ops:
                if op.error is None and (op.path.parent == folder or folder in op.path.parents):
                    op.error = error
