"""The in-memory index of one session's outbox, mirrored from its stored entries.

It answers "was this client_message_id seen?", hands out the next ``seq`` and knows which
messages still wait for the network (kept apart, so picking the next one to send does not
scan every message the session has settled). Acks only move a message forward
(QUEUED → SENT → DELIVERED → READ): a late SENT after DELIVERED changes nothing.
"""

from __future__ import annotations

from dataclasses import replace

from node.storage import OutboxEntry
from registry import MessageStatus


class Outbox:
    """Accepted messages of one session by client_message_id."""

    def __init__(self, entries: list[OutboxEntry] | None = None) -> None:
        self._entries: dict[str, OutboxEntry] = {}
        self._queued: dict[str, OutboxEntry] = {}
        """The QUEUED entries, in seq order (insertion order of the dict)."""
        self._last_seq = 0
        for entry in sorted(entries or (), key=lambda entry: entry.seq):
            self.put(entry)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def queued_count(self) -> int:
        """Messages the network has not acknowledged yet."""
        return len(self._queued)

    def get(self, client_message_id: str) -> OutboxEntry | None:
        """The entry accepted under ``client_message_id``, if any."""
        return self._entries.get(client_message_id)

    def next_seq(self) -> int:
        """The seq the next accepted message gets."""
        return self._last_seq + 1

    def reserve_seq(self) -> int:
        """Hand out the next seq for good: a message whose write fails leaves a gap, and no
        seq is ever given to two messages."""
        self._last_seq += 1
        return self._last_seq

    def put(self, entry: OutboxEntry) -> None:
        """Record a new or updated entry."""
        message_id = entry.client_message_id
        self._entries[message_id] = entry
        if entry.status is not MessageStatus.QUEUED:
            self._queued.pop(message_id, None)
        elif message_id in self._queued or entry.seq > self._last_seq:
            self._queued[message_id] = entry  # an update keeps its place; a new one goes last
        else:  # an older message put late: re-sort (never on the send path)
            self._queued[message_id] = entry
            self._queued = dict(sorted(self._queued.items(), key=lambda item: item[1].seq))
        self._last_seq = max(self._last_seq, entry.seq)

    def keep_only(self, entries: list[OutboxEntry]) -> None:
        """Forget every entry but ``entries`` (what a compaction retained)."""
        kept = {entry.client_message_id for entry in entries}
        self._entries = {key: entry for key, entry in self._entries.items() if key in kept}
        self._queued = {key: entry for key, entry in self._queued.items() if key in kept}

    def advanced(self, client_message_id: str, status: str) -> OutboxEntry | None:
        """The entry moved forward to ``status``, or None if unknown or not a step forward."""
        entry = self._entries.get(client_message_id)
        target = MessageStatus.parse(status)
        if entry is None or target is None:
            return None
        current = MessageStatus(entry.status)
        if current is MessageStatus.FAILED or target.progress <= current.progress:
            return None
        return replace(entry, status=target)

    def entries(self) -> list[OutboxEntry]:
        """Every entry, in seq order."""
        return sorted(self._entries.values(), key=lambda entry: entry.seq)

    def queued(self) -> list[OutboxEntry]:
        """Messages the network has not acknowledged yet, in seq order."""
        return list(self._queued.values())
