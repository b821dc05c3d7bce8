"""whatsmeow's events (as neonize's protobuf objects) mapped to the mesh's driver events.

Pure functions, so every mapping is tested on event objects built in the test, without a
network. :func:`map_event` also says what the connection must do next (:class:`Next`): the
driver, not whatsmeow, decides when to reconnect, and never after a stream conflict.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.drivers.base import LOGGED_OUT, DriverEvent, DriverEventKind
from node.drivers.whatsmeow_neonize import wa
from registry import InvalidInput

DRIVER_NAME = "whatsmeow"
"""The ``driver`` field of the credentials a session persists for this driver."""
FIRST_QR_LIFETIME_SECONDS = 60.0
"""whatsmeow's first QR code of a connection is valid this long, every later one for
:data:`NEXT_QR_LIFETIME_SECONDS`."""
NEXT_QR_LIFETIME_SECONDS = 20.0
USER_SERVER = "s.whatsapp.net"
GROUP_SERVER = "g.us"
_SERVERS = frozenset({USER_SERVER, GROUP_SERVER, "lid", "broadcast", "newsletter"})
_PHONE_DIGITS = re.compile(r"[0-9]{7,15}")
_PHONE_DECORATION = re.compile(r"[\s().-]")
_READ_RECEIPTS = frozenset({wa.Receipt.READ, wa.Receipt.PLAYED})


class Next(enum.Enum):
    """What the connection does after an event."""

    CONTINUE = "continue"
    """Keep the connection as it is."""
    RECONNECT = "reconnect"
    """Drop this connection and open a new one after the (jittered, capped) backoff."""
    FORGET_DEVICE = "forget_device"
    """The phone removed this device: delete the device store, pair again (QR)."""
    STAY_DOWN = "stay_down"
    """Never reconnect: another connection took the account (or the network refuses it)."""


@dataclass(frozen=True)
class Mapped:
    """The driver events one whatsmeow event becomes, and what the connection does next."""

    events: tuple[DriverEvent, ...] = ()
    next: Next = Next.CONTINUE


def jid_text(jid: Any) -> str:
    """``user@server`` of a neonize ``JID`` (empty for an empty one)."""
    if not jid.User and not jid.Server:
        return ""
    return f"{jid.User}@{jid.Server}"


def paired_credentials(jid: str) -> dict[str, Any]:
    """What the session persists once paired: the device store (in the session's folder)
    holds a paired device, so a restore connects from it without a QR."""
    return {"driver": DRIVER_NAME, "jid": jid}


def normalize_phone_number(phone_number: str) -> str:
    """The digits of an international phone number (``+49 151-2345678`` → ``491512345678``).

    Raises ``InvalidInput`` for anything else."""
    digits = _PHONE_DECORATION.sub("", phone_number.strip()).removeprefix("+")
    if not _PHONE_DIGITS.fullmatch(digits):
        raise InvalidInput(
            "phone_number must be an international number of 7 to 15 digits "
            "(country code first, e.g. +4915123456789)"
        )
    return digits


def recipient_jid(to: str) -> Any:
    """The neonize ``JID`` of a recipient: a phone number, or ``user@server``.

    Raises ``InvalidInput`` for anything else."""
    if "@" in to:
        user, _, server = to.strip().partition("@")
        user = user.split(":", 1)[0]
        if not user or server not in _SERVERS:
            raise InvalidInput(f"recipient {to!r} is not a WhatsApp address")
        return wa.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)
    number = normalize_phone_number(to)
    return wa.JID(
        User=number, Server=USER_SERVER, RawAgent=0, Device=0, Integrator=0, IsEmpty=False
    )


def qr_event(code: str, *, index: int, now_unix: float) -> DriverEvent:
    """The ``index``-th (0: first) QR code of a connection, with the time it expires."""
    lifetime = FIRST_QR_LIFETIME_SECONDS if index == 0 else NEXT_QR_LIFETIME_SECONDS
    return DriverEvent(kind=DriverEventKind.QR, qr_code=code, expire_at_unix=now_unix + lifetime)


def message_text(message: Any) -> str:
    """The text of an inbound ``Message`` event ('' when it carries no text)."""
    body = message.Message
    if body.conversation:
        return str(body.conversation)
    if body.HasField("extendedTextMessage"):
        return str(body.extendedTextMessage.text)
    return ""


def map_event(
    event: Any, *, now_unix: float, client_message_id: Callable[[str], str | None]
) -> Mapped:
    """Map one neonize event; ``client_message_id(wa_id)`` is the mesh's id of a message this
    session sent (None for one it did not)."""
    if isinstance(event, wa.Connected):
        return Mapped((DriverEvent(kind=DriverEventKind.READY),))
    if isinstance(event, wa.QR):
        codes = list(event.Codes)
        return Mapped((qr_event(codes[0], index=0, now_unix=now_unix),) if codes else ())
    if isinstance(event, wa.PairStatus):
        if event.Status == wa.PairStatus.SUCCESS:
            credentials = paired_credentials(jid_text(event.ID))
            return Mapped((DriverEvent(kind=DriverEventKind.PAIRED, credentials=credentials),))
        failed = DriverEvent(kind=DriverEventKind.FAILED, reason=f"pairing failed: {event.Error}")
        return Mapped((failed,), Next.STAY_DOWN)
    if isinstance(event, wa.LoggedOut):
        logged_out = DriverEvent(kind=DriverEventKind.DISCONNECTED, reason=LOGGED_OUT)
        return Mapped((logged_out,), Next.FORGET_DEVICE)
    if isinstance(event, wa.StreamReplaced):
        replaced = DriverEvent(kind=DriverEventKind.DISCONNECTED, reason="connection_replaced")
        return Mapped((replaced,), Next.STAY_DOWN)
    if isinstance(event, wa.TemporaryBan):
        reason = f"temporarily banned by WhatsApp (code {event.Code}, for {event.Expire} s)"
        return Mapped((DriverEvent(kind=DriverEventKind.FAILED, reason=reason),), Next.STAY_DOWN)
    if isinstance(event, wa.ClientOutdated):
        reason = "WhatsApp refuses this client version: upgrade the whatsapp extra (neonize)"
        return Mapped((DriverEvent(kind=DriverEventKind.FAILED, reason=reason),), Next.STAY_DOWN)
    if isinstance(event, wa.ConnectFailure):
        down = DriverEvent(kind=DriverEventKind.DISCONNECTED, reason="network", text=event.Message)
        return Mapped((down,), Next.RECONNECT)
    if isinstance(event, wa.Disconnected):
        down = DriverEvent(kind=DriverEventKind.DISCONNECTED, reason="network")
        return Mapped((down,), Next.RECONNECT)
    if isinstance(event, wa.Receipt):
        return Mapped(_acks(event, client_message_id))
    if isinstance(event, wa.Message):
        return Mapped(_inbound(event))
    return Mapped()  # keep-alives, stream errors (a Disconnected follows), presence, …


def _acks(receipt: Any, client_message_id: Callable[[str], str | None]) -> tuple[DriverEvent, ...]:
    if receipt.Type == wa.Receipt.DELIVERED:
        status = "DELIVERED"
    elif receipt.Type in _READ_RECEIPTS:
        status = "READ"
    else:
        return ()  # our own devices, retries, server errors: not the recipient's progress
    acks = []
    for wa_id in receipt.MessageIDs:
        mesh_id = client_message_id(wa_id)
        if mesh_id is not None:
            acks.append(DriverEvent(kind=DriverEventKind.ACK, message_id=mesh_id, status=status))
    return tuple(acks)


def _inbound(message: Any) -> tuple[DriverEvent, ...]:
    info = message.Info
    text = message_text(message)
    if info.MessageSource.IsFromMe or not text:
        return ()  # our own sends echoed by our other devices; media, reactions, …
    inbound = DriverEvent(
        kind=DriverEventKind.INBOUND,
        message_id=info.ID,
        sender=jid_text(info.MessageSource.Sender),
        text=text,
    )
    return (inbound,)
