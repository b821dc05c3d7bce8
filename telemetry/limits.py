"""Process limits every server of the mesh raises at start."""

from __future__ import annotations

import resource

import structlog

_log = structlog.get_logger(__name__)

_LARGE_OPEN_FILE_LIMIT = 1 << 20


def raise_open_file_limit() -> None:
    """Raise the soft limit of open files to the hard limit: every session holds sockets and
    files, and the default soft limit (often 1024) is too low for thousands of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an unlimited soft limit for open files; take a large finite one instead.
    target = _LARGE_OPEN_FILE_LIMIT if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        _log.warning("open_file_limit_unchanged", soft=soft, target=target, error=error)
