"""What a backup needs to know of a session's folder without running it: how many messages it
holds and how many still wait for the network, and its meta with the owner epoch cleared for a
restore (:mod:`backup`). The folder layout itself is :mod:`node.storage`'s."""

from __future__ import annotations

import json
from dataclasses import dataclass

from node import message_log
from node.storage import _META, _WORKSPACE_PREFIX
from registry import MessageStatus

WORKSPACE_FOLDER_PREFIX = _WORKSPACE_PREFIX
"""A workspace's folder under the storage root is this prefix and its id."""
META_FILE = _META
"""The session's meta in its folder."""
MESSAGES_FILE = message_log.LOG_NAME
"""The session's message log in its folder."""


@dataclass(frozen=True)
class SessionSummary:
    """A stored session, counted."""

    messages: int
    """Messages its log holds (accepted and not yet forgotten)."""
    pending: int
    """Of those, the ones the network has not acknowledged: delivered after a restore."""
    is_deleted: bool


def summarize_session(files: dict[str, bytes]) -> SessionSummary:
    """Count the session whose folder's files (name → content) are ``files``."""
    entries = message_log.replay(files.get(MESSAGES_FILE, b"")).values()
    pending = sum(1 for entry in entries if entry.status is MessageStatus.QUEUED)
    is_deleted = False
    meta = files.get(META_FILE)
    if meta is not None:
        try:
            is_deleted = bool(json.loads(meta).get("deleted", False))
        except (ValueError, AttributeError):
            is_deleted = False
    return SessionSummary(messages=len(entries), pending=pending, is_deleted=is_deleted)


def without_owner_epoch(meta: bytes) -> bytes:
    """``meta`` with its owner epoch cleared: a restored session belongs to no epoch yet (a
    restored etcd may count revisions from 1 again, and a newer stored epoch would fence off
    every owner). Raises ``ValueError`` when ``meta`` is not a session's meta."""
    record = json.loads(meta)
    if not isinstance(record, dict) or "workspace_id" not in record:
        raise ValueError("not a session's meta")
    record["owner_epoch"] = 0
    return json.dumps(record, separators=(",", ":")).encode()
