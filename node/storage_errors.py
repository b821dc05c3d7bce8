"""What a failing disk becomes: errors a caller can act on, never a bare ``INTERNAL``.

============================  =====================  ===========================================
the disk says                 error                  status
============================  =====================  ===========================================
``ENOSPC``, ``EDQUOT``        :class:`StorageFull`    ``RESOURCE_EXHAUSTED`` (no retry hint: it
                                                     will not free itself in a moment)
``EIO``, ``EROFS``, any other :class:`StorageFailed`  ``UNAVAILABLE`` (retry hint: the node gives
                                                     its slots up if it keeps failing)
no answer in time             :class:`StorageStalled` ``UNAVAILABLE`` (retry hint)
too many writes queued        :class:`StorageBusy`    ``RESOURCE_EXHAUSTED`` (retry hint)
============================  =====================  ===========================================

A call that gets one of these acknowledged nothing: an accepted message is acknowledged only
once its record is on disk (see :mod:`node.commit_io` for records taken back).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from registry import CapacityExhausted, Unavailable

STORAGE_RETRY_AFTER_MS = 1000
"""Retry hint of a write refused because the storage failed or stopped answering."""
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(CapacityExhausted):
    """The storage has no room (``ENOSPC``/``EDQUOT``); nothing was acknowledged."""


class StorageBusy(CapacityExhausted):
    """Too many writes wait for the storage already (``group_commit.MAX_QUEUED_OPS``): this
    one is refused before it is queued; nothing was written. Retry after the hint."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_ms=STORAGE_RETRY_AFTER_MS)


class StorageFailed(Unavailable):
    """The storage refused a read or write (``EIO``, read-only, …); nothing was acknowledged."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_ms=STORAGE_RETRY_AFTER_MS)


class StorageStalled(Unavailable):
    """The storage did not answer within its deadline; nothing was acknowledged."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_ms=STORAGE_RETRY_AFTER_MS)


class LeaseLapsed(Unavailable):
    """A write refused at the last moment: this node's lease is no longer confirmed, so the
    session may already run elsewhere; nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_ms=STORAGE_RETRY_AFTER_MS)


class StaleWrite(Exception):
    """A write refused because the stored copy names a newer owner epoch than the writer's."""


@contextlib.contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into :class:`StorageFull` or
    :class:`StorageFailed` naming ``action``."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        if error.errno in _FULL:
            raise StorageFull(f"cannot {action}: storage full ({reason})") from error
        raise StorageFailed(f"cannot {action}: storage error ({reason})") from error
