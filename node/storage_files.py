"""The session storage's file work, as its worker threads do it: confining paths to the root,
reading JSON records (a record that does not parse is a :class:`CorruptRecord`), the epoch
check made just before a meta is renamed into place, and the old outbox format's files."""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any

from node.commit_io import TEMP_PREFIX, fsync_folder
from node.storage_errors import StaleWrite
from node.storage_records import SessionMeta
from registry import InvalidInput

JSON_SUFFIX = ".json"


class CorruptRecord(ValueError):
    """A stored file that does not parse (a torn or damaged ``meta.json``, say)."""


def from_dict(cls: type[Any], raw: dict[str, Any]) -> Any:
    # Ignore fields a newer version wrote, so an older node can still read the file.
    return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


@functools.lru_cache(maxsize=65_536)
def resolved_folder(folder: str) -> Path:
    # Cached, and built on the cached parent: resolving walks every component with a system
    # call, and a create burst touches thousands of new session folders under a few
    # workspace folders — one lstat per new folder instead of one per component. A folder
    # swapped for a symlink after its first check would need write access to the storage
    # root itself.
    path = Path(folder)
    if path.parent == path:
        return path
    candidate = resolved_folder(str(path.parent)) / path.name
    return candidate.resolve() if candidate.is_symlink() else candidate


def confined(path: Path, root: Path) -> Path:
    """``path`` if, with symlinks resolved, it stays under ``root`` (runs in a worker thread:
    resolving touches the file system)."""
    if path.is_symlink() or not resolved_folder(str(path.parent)).is_relative_to(root):
        raise InvalidInput(f"path {path} leaves the storage root")
    return path


def read_json(path: Path, root: Path) -> Any:
    confined(path, root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(data)
    except ValueError as error:
        raise CorruptRecord(f"{path.name} does not parse: {error}") from error


def refuse_if_newer(path: Path, root: Path, epoch: int) -> None:
    """Raise ``StaleWrite`` if ``path``'s meta names an owner epoch newer than ``epoch`` (a
    meta that does not parse is overwritten)."""
    try:
        stored = meta_of(read_json(path, root), path)
    except CorruptRecord:
        return
    if stored is not None and stored.owner_epoch > epoch:
        raise StaleWrite(f"{path} is owned under epoch {stored.owner_epoch}, not {epoch}")


def meta_of(raw: Any, path: Path) -> SessionMeta | None:
    if raw is None:
        return None
    try:
        meta: SessionMeta = from_dict(SessionMeta, raw)
    except (TypeError, ValueError) as error:
        raise CorruptRecord(f"{path.name} is not a session's meta: {error}") from error
    return meta


def encode(value: Any) -> bytes:
    # Compact: a restore writes one meta per session, and pretty-printing showed in profiles.
    return json.dumps(value, separators=(",", ":")).encode()


def json_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [
        path
        for path in directory.iterdir()
        if path.suffix == JSON_SUFFIX and not path.name.startswith(TEMP_PREFIX)
    ]


def remove_legacy_outbox(directory: Path, root: Path) -> None:
    """Delete an old-format outbox folder whose entries a compacted log now holds."""
    files = json_files(directory)
    if not files:
        return
    for path in files:
        confined(path, root)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):  # a leftover temp file keeps it: harmless
        directory.rmdir()
    fsync_folder(directory.parent)
