"""Shared session storage: one folder per session, every write atomic.

::

    <root>/workspace_<workspace_id>/<session_id>/
        meta.json                        SessionMeta
        credentials.json                 what the driver needs to reconnect without a QR
        outbox/<client_message_id>.json  OutboxEntry, one per accepted message

Ids are checked with ``registry.ids.validate_id`` before any path is built, and the
resolved path must stay under the root, so no id can reach outside the tree. A write goes
to a temp file in the same folder and is renamed over the target, with the file system
flushed before and after the rename; writes queued together share those flushes
(:mod:`node.group_commit`). A crash leaves the old file or the new one, never half of one,
and a write returns only once it is on disk. All file I/O runs in worker threads, never on
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from node.group_commit import TEMP_PREFIX, GroupCommitWriter
from registry import InvalidInput, MessageStatus, validate_id

_WORKSPACE_PREFIX = "workspace_"
_META = "meta.json"
_CREDENTIALS = "credentials.json"
_OUTBOX = "outbox"
_JSON_SUFFIX = ".json"
_TEMP_PREFIX = TEMP_PREFIX
"""Temp files start with a dot, so scans skip any a crash left behind."""


@dataclass(frozen=True)
class SessionMeta:
    """What a session's ``meta.json`` records."""

    workspace_id: str
    session_id: str
    phone_number: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    node_id: str = ""
    """The node that last ran the session."""
    state: str = "starting"
    """The last known state, lower case (``ready``, ``stopped``…)."""
    created_at_unix: float = 0.0
    updated_at_unix: float = 0.0
    disconnect_reason: str = ""
    disconnect_details: str = ""
    disconnected_at_unix: float = 0.0
    """0 when it never disconnected."""
    error: str = ""
    """Why it FAILED, if it did."""
    deleted: bool = False
    """DeleteSession ran: never restored; the folder stays as a record."""
    owner_epoch: int = 0
    """Epoch (ownership key create revision) of the owner that last restored or created it: a
    node whose epoch is older must not write any more (see ``node.fencing``)."""

    def changed(self, **changes: Any) -> SessionMeta:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


@dataclass(frozen=True)
class OutboxEntry:
    """One accepted message in a session's outbox."""

    client_message_id: str
    to: str
    text: str
    status: MessageStatus
    """Where the message is on its way (stored as its name, ``QUEUED``…)."""
    accepted_at_unix: float
    seq: int
    """Acceptance order within the session: delivery follows it."""
    accepted_by_node_id: str = ""

    def __post_init__(self) -> None:
        # Read back from JSON the status is a plain string: hold it as the enum.
        object.__setattr__(self, "status", MessageStatus(self.status))


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
    # Cached: resolving walks every component with a system call, and writes come in bursts
    # to the same few thousand session folders. A folder swapped for a symlink after its
    # first check would need write access to the storage root itself.
    return Path(folder).resolve()


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
    return json.dumps(value, sort_keys=True, indent=1).encode()


class SessionStorage:
    """The session tree under ``root`` (a local folder, or NFS/EFS shared by every node)."""

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root).resolve()
        self._writer = GroupCommitWriter(self._root, check=self._confine)

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
        validate_id(session_id, field="session_id")
        return self._inside(self.workspace_dir(workspace_id) / session_id)

    def _inside(self, path: Path) -> Path:
        # Belt and braces: the id charset already forbids '/', '..' and NUL. This check is
        # lexical (no I/O on the loop); symlinks are checked again where files are touched.
        normal = Path(os.path.normpath(path))
        if not normal.is_relative_to(self._root):
            raise InvalidInput(f"path {path} leaves the storage root")
        return normal

    def _outbox_file(self, workspace_id: str, session_id: str, client_message_id: str) -> Path:
        validate_id(client_message_id, field="client_message_id")
        outbox = self.session_dir(workspace_id, session_id) / _OUTBOX
        return self._inside(outbox / f"{client_message_id}{_JSON_SUFFIX}")

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

    async def save_outbox_entry(
        self, workspace_id: str, session_id: str, entry: OutboxEntry
    ) -> None:
        """Write one outbox entry atomically (a new one, or a status change)."""
        path = self._outbox_file(workspace_id, session_id, entry.client_message_id)
        await self._writer.write(path, _encode(asdict(entry)))

    async def load_outbox(self, workspace_id: str, session_id: str) -> list[OutboxEntry]:
        """Every outbox entry of the session, in ``seq`` order."""
        outbox = self.session_dir(workspace_id, session_id) / _OUTBOX

        def read_all() -> list[OutboxEntry]:
            entries: list[OutboxEntry] = []
            for path in _json_files(outbox):
                raw = _read_json(path, self._root)
                if raw is not None:
                    entries.append(_from_dict(OutboxEntry, raw))
            return sorted(entries, key=lambda entry: entry.seq)

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
