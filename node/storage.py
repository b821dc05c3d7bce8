"""Shared session storage: one folder per session, every write atomic and durable.

::

    <root>/workspace_<workspace_id>/<session_id>/
        meta.json          SessionMeta (written when a node opens, stops or deletes it)
        credentials.json   what the driver needs to reconnect without a QR
        messages.log       the session's accepted messages and their statuses, appended
                           (see node.message_log)

Ids are checked with ``registry.ids.validate_id`` before any path is built, and the
resolved path must stay under the root, so no id can reach outside the tree. Whole files are
replaced atomically (temp file, flush, rename, flush); the message log is appended to; writes
queued together share their flushes (:mod:`node.group_commit`). A write that must be durable
returns only once it is on disk. All file I/O runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from node import message_log
from node.group_commit import TEMP_PREFIX, GroupCommitWriter
from node.storage_records import OutboxEntry, SessionMeta
from registry import InvalidInput, MessageStatus, validate_id

__all__ = ["OutboxEntry", "SessionMeta", "SessionStorage"]

_WORKSPACE_PREFIX = "workspace_"
_META = "meta.json"
_CREDENTIALS = "credentials.json"
_LEGACY_OUTBOX = message_log.LEGACY_OUTBOX
_MAX_CACHED_LOG_PATHS = 65_536
_JSON_SUFFIX = ".json"
_TEMP_PREFIX = TEMP_PREFIX
"""Temp files start with a dot, so scans skip any a crash left behind."""


def _from_dict(cls: type[Any], raw: dict[str, Any]) -> Any:
    # Ignore fields a newer version wrote, so an older node can still read the file.
    return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@functools.lru_cache(maxsize=65_536)
def _resolved_folder(folder: str) -> Path:
    # Cached, and built on the cached parent: resolving walks every component with a system
    # call, and a create burst touches thousands of new session folders under a few
    # workspace folders — one lstat per new folder instead of one per component. A folder
    # swapped for a symlink after its first check would need write access to the storage
    # root itself.
    path = Path(folder)
    if path.parent == path:
        return path
    candidate = _resolved_folder(str(path.parent)) / path.name
    return candidate.resolve() if candidate.is_symlink() else candidate


def _confined(path: Path, root: Path) -> Path:
    """``path`` if, with symlinks resolved, it stays under ``root`` (runs in a worker thread:
    resolving touches the file system)."""
    if path.is_symlink() or not _resolved_folder(str(path.parent)).is_relative_to(root):
        raise InvalidInput(f"path {path} leaves the storage root")
    return path


def _read_json(path: Path, root: Path) -> Any:
    _confined(path, root)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def _encode(value: Any) -> bytes:
    # Compact: a restore writes one meta per session, and pretty-printing showed in profiles.
    return json.dumps(value, separators=(",", ":")).encode()


class SessionStorage:
    """The session tree under ``root`` (a local folder, or NFS/EFS shared by every node)."""

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root).resolve()
        self._writer = GroupCommitWriter(self._root, check=self._confine)
        self._log_paths: dict[tuple[str, str], Path] = {}
        self._session_dirs: dict[tuple[str, str], Path] = {}

    def _confine(self, path: Path) -> Path:
        return _confined(path, self._root)

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

    async def save_meta(self, meta: SessionMeta) -> None:
        """Write ``meta.json`` atomically."""
        path = self.session_dir(meta.workspace_id, meta.session_id) / _META
        await self._writer.write(path, _encode(asdict(meta)))

    async def load_meta(self, workspace_id: str, session_id: str) -> SessionMeta | None:
        """The stored meta, or None if the session was never stored."""
        path = self.session_dir(workspace_id, session_id) / _META
        raw = await asyncio.to_thread(_read_json, path, self._root)
        return None if raw is None else _from_dict(SessionMeta, raw)

    async def save_credentials(
        self, workspace_id: str, session_id: str, credentials: dict[str, Any]
    ) -> None:
        """Write ``credentials.json`` atomically."""
        path = self.session_dir(workspace_id, session_id) / _CREDENTIALS
        await self._writer.write(path, _encode(credentials))

    async def load_credentials(self, workspace_id: str, session_id: str) -> dict[str, Any] | None:
        """The stored credentials, or None if the session was never paired."""
        path = self.session_dir(workspace_id, session_id) / _CREDENTIALS
        raw = await asyncio.to_thread(_read_json, path, self._root)
        return raw if isinstance(raw, dict) else None

    async def delete_credentials(self, workspace_id: str, session_id: str) -> None:
        """Forget the credentials (after a logout); no error if there are none."""
        path = self.session_dir(workspace_id, session_id) / _CREDENTIALS

        def remove() -> None:
            _confined(path, self._root)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                _fsync_directory(path.parent)

        await asyncio.to_thread(remove)

    async def append_accepted(self, workspace_id: str, session_id: str, entry: OutboxEntry) -> None:
        """Append an accepted message to the session's log; returns once it is on disk."""
        validate_id(entry.client_message_id, field="client_message_id")
        path = self._log_file(workspace_id, session_id)
        await self._writer.append(path, message_log.accepted_record(entry))

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
        self, workspace_id: str, session_id: str, entries: list[OutboxEntry]
    ) -> None:
        """Replace the session's log with one holding just ``entries`` (compacted), durably;
        then retire the per-message files of the old format, if any."""
        path = self._log_file(workspace_id, session_id)
        await self._writer.write(path, message_log.compacted(entries))
        legacy = self.session_dir(workspace_id, session_id) / _LEGACY_OUTBOX
        await asyncio.to_thread(_remove_legacy_outbox, legacy, self._root)

    async def close_messages(self, workspace_id: str, session_id: str) -> None:
        """Make everything appended to the session's log durable and close it (it stops)."""
        await self._writer.close(self._log_file(workspace_id, session_id))

    async def load_outbox(self, workspace_id: str, session_id: str) -> list[OutboxEntry]:
        """Every message of the session, in ``seq`` order: its log, and the per-message files
        of the old format if the folder still has them."""
        entries, _ = await self._read_messages(workspace_id, session_id)
        return entries

    async def open_messages(self, workspace_id: str, session_id: str) -> list[OutboxEntry]:
        """Every message of the session (see :meth:`load_outbox`), for a node that starts
        running it: a log that exists is rewritten compacted first, so this node appends to a
        file of its own (a torn last line, or a former owner's late append, cannot mix with
        its records), settled messages past the dedupe window are forgotten and the old format is
        retired."""
        entries, has_files = await self._read_messages(workspace_id, session_id)
        if has_files:
            entries = message_log.retained(entries, now_unix=time.time())
            await self.rewrite_messages(workspace_id, session_id, entries)
        return entries

    async def _read_messages(
        self, workspace_id: str, session_id: str
    ) -> tuple[list[OutboxEntry], bool]:
        path = self._log_file(workspace_id, session_id)
        await self._writer.flush()  # this node's queued statuses land before the read
        legacy = self.session_dir(workspace_id, session_id) / _LEGACY_OUTBOX

        def read_all() -> tuple[list[OutboxEntry], bool]:
            _confined(path, self._root)
            try:
                data: bytes | None = path.read_bytes()
            except FileNotFoundError:
                data = None
            logged = message_log.replay(data) if data is not None else {}
            legacy_files = _json_files(legacy)
            old = [_read_json(file, self._root) for file in legacy_files]
            entries = message_log.merge(logged, (raw for raw in old if raw is not None))
            return entries, data is not None or bool(legacy_files)

        return await asyncio.to_thread(read_all)

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

        return await asyncio.to_thread(scan)

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

        return await asyncio.to_thread(measure)


def _json_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [
        path
        for path in directory.iterdir()
        if path.suffix == _JSON_SUFFIX and not path.name.startswith(_TEMP_PREFIX)
    ]


def _remove_legacy_outbox(directory: Path, root: Path) -> None:
    """Delete an old-format outbox folder whose entries a compacted log now holds."""
    files = _json_files(directory)
    if not files:
        return
    for path in files:
        _confined(path, root)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):  # a leftover temp file keeps it: harmless
        directory.rmdir()
    _fsync_directory(directory.parent)
