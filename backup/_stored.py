"""What every backup target shares: the archive naming scheme, the record of a stored archive,
the check on names, and progress reports brought back to the event loop.

An archive is named ``sessionmesh-<cluster>-<YYYYmmddTHHMMSSZ>.smbk`` (the time in UTC, to
the second): its cluster and the moment it was taken can be read back from the name alone,
which is what retention goes by (a copied file's modification time says nothing).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from registry import (
    InvalidInput,
    MeshError,
    NotFound,
    PermissionDenied,
    Unavailable,
    validate_id,
)

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes moved since its previous call (add them up for a total;
S3 reports a negative number when it takes back a part it sends again)."""

ARCHIVE_SUFFIX = ".smbk"
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_ARCHIVE_NAME = re.compile(
    r"sessionmesh-(?P<cluster>[A-Za-z0-9_-]{1,64})-(?P<stamp>[0-9]{8}T[0-9]{6}Z)\.smbk"
)
MAX_STORED_NAME_BYTES = 255
"""The longest file name most file systems take."""


def archive_name(cluster: str, at_unix: float) -> str:
    """The name of ``cluster``'s archive taken at ``at_unix`` (UTC, whole seconds)."""
    validate_id(cluster, field="cluster")
    stamp = datetime.fromtimestamp(int(at_unix), tz=UTC).strftime(_STAMP_FORMAT)
    return f"sessionmesh-{cluster}-{stamp}{ARCHIVE_SUFFIX}"


def parse_archive_name(name: str) -> tuple[str, float] | None:
    """``(cluster, at_unix)`` of a name made by :func:`archive_name`; None for any other."""
    match = _ARCHIVE_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        taken = datetime.strptime(match["stamp"], _STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # digits in the right places, but no such moment (month 13)
        return None
    return match["cluster"], taken.timestamp()


def validate_stored_name(name: str) -> str:
    """Return ``name`` if it is a plain file name a target may store, else raise
    ``InvalidInput``: nothing may reach outside the folder or prefix, or hide as a dot file
    (temporary files start with a dot)."""
    shown = name if len(name) <= 80 else name[:80] + "…"
    if not name:
        raise InvalidInput("archive name is required")
    if "/" in name or "\\" in name:
        raise InvalidInput(f"archive name {shown!r} is invalid: a file name, without '/'")
    if ".." in name:
        raise InvalidInput(f"archive name {shown!r} is invalid: it may not contain '..'")
    if name.startswith("."):
        raise InvalidInput(f"archive name {shown!r} is invalid: it may not start with '.'")
    if "\x00" in name or not name.isprintable():
        raise InvalidInput(f"archive name {shown!r} is invalid: control characters")
    if len(name.encode()) > MAX_STORED_NAME_BYTES:
        raise InvalidInput(
            f"archive name {shown!r} is invalid: longer than {MAX_STORED_NAME_BYTES} bytes"
        )
    return name


@dataclass(frozen=True)
class StoredArchive:
    """One archive as a target lists it."""

    name: str
    """The file name (no folder, no prefix)."""
    size_bytes: int
    modified_unix: float
    """When the store last wrote it (seconds since the epoch); retention goes by the name."""

    @property
    def cluster(self) -> str | None:
        """The cluster the name says it backs up; None for a name outside the scheme."""
        parsed = parse_archive_name(self.name)
        return None if parsed is None else parsed[0]

    @property
    def taken_at_unix(self) -> float | None:
        """When the name says it was taken; None for a name outside the scheme."""
        parsed = parse_archive_name(self.name)
        return None if parsed is None else parsed[1]


def progress_on_loop(progress: ProgressCallback | None) -> ProgressCallback | None:
    """``progress`` made callable from worker threads: each call is run on the calling
    coroutine's event loop, in order, and all of them before the transfer's ``await``
    returns (the loop runs callbacks first in, first out)."""
    if progress is None:
        return None
    loop = asyncio.get_running_loop()
    report = progress

    def from_thread(moved_bytes: int) -> None:
        loop.call_soon_threadsafe(report, moved_bytes)

    return from_thread


def file_error(error: OSError, *, doing: str) -> MeshError:
    """The error family's word for a failed local file operation (``doing`` says what was
    being done, for the message)."""
    reason = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    if isinstance(error, FileNotFoundError):
        return NotFound(f"cannot {doing}: {reason}{where}")
    if isinstance(error, PermissionError):
        return PermissionDenied(f"cannot {doing}: {reason}{where}")
    if isinstance(error, (IsADirectoryError, NotADirectoryError)):
        return InvalidInput(f"cannot {doing}: {reason}{where}")
    return Unavailable(f"cannot {doing}: {reason}{where}")
