"""Reading the session storage tree while the mesh serves it, one session at one moment.

A session's files change while it runs: whole files are replaced atomically, logs are
appended to. A session is read whole, then its files are looked at again (size, modification
time, inode); if any changed, or a file came or went, it is read again, a little later. A
session read twice alike is one moment's. One that never settles within ``ATTEMPTS`` (a
session receiving a steady stream of sends) is taken as last read and named in the manifest:
each of its files is whole (replaced atomically, or an append-only log, cut at its last full
line), so it restores, possibly without the newest messages of that last moment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node import WORKSPACE_FOLDER_PREFIX
from registry import InvalidInput, validate_id

ATTEMPTS = 20
"""Reads of one session before it is taken as last read."""
RETRY_PAUSE_SECONDS = 0.01
"""The first pause between two reads of one session (doubled each time, up to 0.2 s)."""

_Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class SessionFiles:
    """One session's files as read at one moment (``is_settled``) or as last read."""

    workspace_id: str
    session_id: str
    files: dict[str, bytes]
    """Path inside the session's folder (``/``-separated) → content."""
    is_settled: bool


def workspace_folders(root: Path, workspaces: set[str] | None = None) -> Iterator[tuple[str, Path]]:
    """``(workspace_id, folder)`` of every workspace in the tree (or of ``workspaces``)."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or not entry.name.startswith(WORKSPACE_FOLDER_PREFIX):
            continue
        workspace_id = entry.name[len(WORKSPACE_FOLDER_PREFIX) :]
        if workspaces is not None and workspace_id not in workspaces:
            continue
        yield workspace_id, entry


def session_folders(workspace_folder: Path) -> Iterator[tuple[str, Path]]:
    """``(session_id, folder)`` of every session of a workspace folder (valid ids only)."""
    for entry in sorted(workspace_folder.iterdir()):
        if not entry.is_dir():
            continue
        try:
            yield validate_id(entry.name, field="session_id"), entry
        except InvalidInput:
            continue  # not a session's folder (no node writes one by that name)


def tree_stamps(folder: Path) -> dict[str, _Stamp]:
    """Size, modification time and inode of every file under ``folder`` (temp files aside)."""
    stamps: dict[str, _Stamp] = {}
    for directory, _subfolders, names in os.walk(folder):
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # an atomic replace under way: its result is read next time
            path = Path(directory) / name
            try:
                status = path.stat()
            except FileNotFoundError:
                continue
            relative = path.relative_to(folder).as_posix()
            stamps[relative] = (status.st_size, status.st_mtime_ns, status.st_ino)
    return stamps


def _read(folder: Path, names: list[str]) -> dict[str, bytes] | None:
    files: dict[str, bytes] = {}
    for name in names:
        try:
            files[name] = (folder / name).read_bytes()
        except FileNotFoundError:
            return None  # replaced or removed meanwhile: read again
    return files


def _whole_lines(name: str, data: bytes) -> bytes:
    if name.endswith(".log") and data and not data.endswith(b"\n"):
        return data[: data.rfind(b"\n") + 1]  # a line being appended: not yet written
    return data


def read_session(workspace_id: str, session_id: str, folder: Path) -> SessionFiles:
    """Read one session's folder at one moment if it settles (see the module docstring)."""
    pause = RETRY_PAUSE_SECONDS
    files: dict[str, bytes] = {}
    for _attempt in range(ATTEMPTS):
        before = tree_stamps(folder)
        read = _read(folder, sorted(before))
        if read is not None:
            files = read
            if tree_stamps(folder) == before:
                return SessionFiles(workspace_id, session_id, files, is_settled=True)
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
    last = {name: _whole_lines(name, data) for name, data in files.items()}
    return SessionFiles(workspace_id, session_id, last, is_settled=False)
