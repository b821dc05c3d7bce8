"""The driver interface: the code that talks to the messaging network for one session.

A driver is started with the session's stored credentials (or none) and a
callback; it reports everything that happens as :class:`DriverEvent` values
through that callback, from the event loop. A driver for a real network plugs
into the same interface.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

LOGGED_OUT = "logged_out"
"""The ``DISCONNECTED`` reason of a pairing the phone ended: the credentials are removed."""


class DriverEventKind(enum.Enum):
    """What a driver reports."""

    QR = "qr"
    """A (new) QR code to scan: ``qr_code``, ``expire_at_unix``."""
    PAIRED = "paired"
    """The phone scanned the code: ``credentials`` must be persisted now."""
    READY = "ready"
    """Connected; messages flow."""
    DISCONNECTED = "disconnected"
    """Connection lost: ``reason`` (``connection_replaced``, ``network``, ``logged_out``)."""
    ACK = "ack"
    """``message_id`` reached ``status`` (``SENT``, ``DELIVERED``, ``READ``)."""
    INBOUND = "inbound"
    """A message arrived: ``message_id``, ``sender``, ``text``."""
    FAILED = "failed"
    """Cannot continue: ``reason``."""


@dataclass(frozen=True)
class DriverEvent:
    """One thing that happened to a session's connection."""

    kind: DriverEventKind
    qr_code: str = ""
    expire_at_unix: float = 0.0
    credentials: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    message_id: str = ""
    status: str = ""
    sender: str = ""
    text: str = ""


EventCallback = Callable[[DriverEvent], None]

PAIRING_CODE_VALIDITY_SECONDS = 120.0
"""How long the API tells callers a pairing code stays good for. Neither simnet nor whatsmeow
says when a code expires; this is short enough that a code shown as valid is."""


class Driver(Protocol):
    """One session's connection to the messaging network."""

    async def start(self, credentials: dict[str, Any] | None, on_event: EventCallback) -> None:
        """Connect: with credentials straight to READY, without them through QR and pairing."""
        ...

    async def send(self, message_id: str, to: str, text: str) -> None:
        """Hand a message to the network; its acks arrive later as ``ACK`` events.

        Raises ``registry.errors.Unavailable`` if not connected. Sending the same
        ``message_id`` again is harmless: the network deduplicates by id.
        """
        ...

    async def stop(self, *, logout: bool) -> None:
        """Disconnect; with ``logout`` also forget the pairing on the network side."""
        ...

    async def request_pairing_code(self, phone_number: str) -> str:
        """Pair by phone number instead of a QR scan: the code to type on the phone of
        ``phone_number`` (E.164), e.g. ``ABCD-EFGH``. Once it is entered the driver reports
        ``PAIRED`` and ``READY`` as after a scan.

        Raises ``registry.Unavailable`` if not connected, ``registry.WrongState`` if the
        network is not waiting for this session to pair (it is paired already).
        """
        ...


class DriverFactory(Protocol):
    """Makes the driver for one session."""

    def __call__(self, workspace_id: str, session_id: str) -> Driver:
        """A new, unstarted driver for the session."""
        ...
