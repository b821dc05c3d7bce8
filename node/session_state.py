"""The states a hosted session goes through, and how the API shows one."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from node.storage import SessionMeta


class SessionState(enum.Enum):
    """The lifecycle of a session (values are what meta.json and the accounts DB store)."""

    STARTING = "starting"
    QR_PENDING = "qr_pending"
    AUTHENTICATED = "authenticated"
    READY = "ready"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    STOPPED = "stopped"


STORED_STATES = frozenset({SessionState.STOPPED, SessionState.FAILED})
"""The states written to ``meta.json`` (with the meta written when the session opens, on this
node under its epoch): what another node must be able to read — a session that stopped or
failed here, or was deleted. The states on the way to READY and back live in memory (and in
the accounts DB): writing each one durably was most of the disk work of a create."""


@dataclass(frozen=True)
class SessionView:
    """A session as the API shows it: its meta plus the QR code while pending."""

    meta: SessionMeta
    qr_code: str = ""
    qr_expire_at_unix: float = 0.0

    @property
    def state(self) -> SessionState:
        """The state recorded in the meta."""
        return SessionState(self.meta.state)
