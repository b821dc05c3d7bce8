"""Workspaces grouped into a fixed number of slots, the unit that is owned and moved."""

from __future__ import annotations

import zlib

DEFAULT_SLOT_COUNT = 4096
"""Slots per cluster; chosen when a cluster is created and never changed after."""


def slot_of(workspace_id: str, slot_count: int = DEFAULT_SLOT_COUNT) -> int:
    """The slot that holds ``workspace_id``: CRC32 of its UTF-8 bytes modulo ``slot_count``.

    CRC32 is stable across processes and Python versions, unlike ``hash()``.
    """
    return zlib.crc32(workspace_id.encode()) % slot_count
