"""The in-memory index of one session's outbox, mirrored from its stored entries.

It answers "was this client_message_id seen?", hands out the next ``seq`` and knows which
messages still wait for the network. Acks only move a message forward
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
        self._last_seq = 0
        for entry in entries or ():
            self.put(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, client_message_id: str) -> OutboxEntry | None:
        """The entry accepted under ``client_message_id``, if any."""
        return self._entries.get(client_message_id)

    def next_seq(self) -> int:
        """The seq the next accepted message gets."""
        return self._last_seq + 1

    def put(self, entry: OutboxEntry) -> None:
        """Record a new or updated entry."""
        self._entries[entry.client_message_id] = entry
        self._last_seq = max(self._last_seq, entry.seq)

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
        return sorted(
            (entry for entry in self._entries.values() if entry.status == MessageStatus.QUEUED),
            key=lambda entry: entry.seq,
        )
