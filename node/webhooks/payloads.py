"""What a receiver is sent for a session event: its type, its stable id and its JSON body::

    {"type": "message.delivered", "timestamp": "2026-12-01T10:00:00.125Z",
     "workspace_id": "ws-1", "session_id": "s-1", "sequence": 42,
     "data": {"client_message_id": "m-1", "status": "DELIVERED"}}

The id (``webhook-id``) is derived from the session and the event's sequence, so every
attempt, every node and every replay of one event carry the same id: a receiver that dedupes
by it sees each event once.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from node.events import EventKind, SessionEvent
from registry import MessageStatus
from registry.webhooks import (
    MESSAGE_ACCEPTED,
    MESSAGE_DELIVERED,
    MESSAGE_FAILED,
    MESSAGE_READ,
    MESSAGE_RECEIVED,
    MESSAGE_SENT,
    SESSION_MOVED,
    SESSION_QR,
    SESSION_STATE_CHANGED,
    WEBHOOK_TEST,
)

_ACK_TYPES = {
    MessageStatus.QUEUED.value: MESSAGE_ACCEPTED,
    MessageStatus.SENT.value: MESSAGE_SENT,
    MessageStatus.DELIVERED.value: MESSAGE_DELIVERED,
    MessageStatus.READ.value: MESSAGE_READ,
    MessageStatus.FAILED.value: MESSAGE_FAILED,
}


def webhook_type(event: SessionEvent) -> str | None:
    """The webhook type of ``event``; None for an event receivers are not sent."""
    kind = event.kind
    if kind is EventKind.STATE_CHANGED:
        return SESSION_STATE_CHANGED
    if kind is EventKind.QR_ROTATED:
        return SESSION_QR
    if kind is EventKind.SESSION_MOVED:
        return SESSION_MOVED
    if kind is EventKind.INBOUND_MESSAGE:
        return MESSAGE_RECEIVED
    if kind is EventKind.MESSAGE_ACK:
        return _ACK_TYPES.get(str(event.status))
    return None


def session_key(workspace_id: str, session_id: str, created_at_unix: float) -> str:
    """16 hex digits naming one incarnation of a session (a session deleted and created
    again numbers its events anew under another key)."""
    text = f"{workspace_id}/{session_id}/{created_at_unix!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def event_id(session: str, sequence: int) -> str:
    """The ``webhook-id`` of the event at ``sequence`` of the session ``session`` names."""
    return f"evt_{session}_{sequence}"


def iso_time(at_unix: float) -> str:
    """``at_unix`` as an RFC 3339 UTC time with milliseconds."""
    moment = datetime.fromtimestamp(at_unix, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _data(event: SessionEvent) -> dict[str, Any]:
    kind = event.kind
    if kind is EventKind.STATE_CHANGED:
        data: dict[str, Any] = {
            "state": event.state.upper(),
            "previous_state": event.previous_state.upper(),
        }
        if event.reason:
            data["reason"] = event.reason
        return data
    if kind is EventKind.QR_ROTATED:
        return {"qr_code": event.qr_code, "expires_at": iso_time(event.qr_expire_at_unix)}
    if kind is EventKind.SESSION_MOVED:
        return {"previous_node_id": event.previous_node_id, "node_id": event.node_id}
    if kind is EventKind.INBOUND_MESSAGE:
        return {"message_id": event.message_id, "from": event.sender, "text": event.text}
    return {"client_message_id": event.message_id, "status": str(event.status)}


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def body(event: SessionEvent, *, event_type: str, workspace_id: str, session_id: str) -> bytes:
    """The JSON body posted for ``event``: the same on every attempt."""
    return _encode(
        {
            "type": event_type,
            "timestamp": iso_time(event.at_unix),
            "workspace_id": workspace_id,
            "session_id": session_id,
            "sequence": event.sequence,
            "data": _data(event),
        }
    )


def test_body(*, workspace_id: str, at_unix: float) -> bytes:
    """The body of ``SendTestEvent``'s ``webhook.test`` event."""
    return _encode(
        {
            "type": WEBHOOK_TEST,
            "timestamp": iso_time(at_unix),
            "workspace_id": workspace_id,
            "session_id": "",
            "sequence": 0,
            "data": {"message": "a test event from sessionmesh"},
        }
    )
