"""Where an accepted message is on its way: the one vocabulary of the node's outbox, the
drivers' acks, simnet's record and the API's ``MessageStatus``."""

from __future__ import annotations

import enum


class MessageStatus(enum.StrEnum):
    """A message's status; acks only move it forward (QUEUED → SENT → DELIVERED → READ).

    The values are what storage, the accounts of simnet and its protocol spell.
    """

    QUEUED = "QUEUED"
    """Accepted and on disk; the network has not acknowledged it yet."""
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    READ = "READ"
    FAILED = "FAILED"
    """Will never be sent (its session was deleted first)."""

    @property
    def progress(self) -> int:
        """Order along the way: a status may only be followed by one of higher progress."""
        return _PROGRESS[self]

    @classmethod
    def parse(cls, text: str) -> MessageStatus | None:
        """The status spelled ``text`` (any case), None if it names none."""
        try:
            return cls(text.upper())
        except ValueError:
            return None


_PROGRESS = {status: index for index, status in enumerate(MessageStatus)}
