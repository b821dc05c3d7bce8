"""simnet's wire protocol: newline-delimited JSON over TCP, one object per line, UTF-8.

An *account* is named ``"<workspace_id>/<session_id>"``. A connection binds to one
account with ``connect``; admin requests (``stats``, ``push``, ``drop``) work on any
connection.

Client → server (``op``)::

    {"op":"connect","account":A,"credentials":TOKEN|null}
    {"op":"send","id":MID,"to":TO,"text":TEXT}     only on a ready connection
    {"op":"logout"}                                forget A's credentials, then close
    {"op":"pair_code","phone":PHONE}               while pairing: pair by a code, not a QR scan
    {"op":"stats","include_ids":true}              admin: ground-truth summary
    {"op":"push","account":A,"from":SENDER,"text":TEXT}   admin: inbound message to A
    {"op":"drop","account":A}                      admin: cut A's live connection

Server → client (``ev``)::

    {"ev":"qr","code":CODE,"expire_at":UNIX}       rotates while pairing is pending
    {"ev":"pairing_code","code":"ABCD-EFGH"}       the code to type on the phone; the phone
                                                   enters it after the pair delay (at once when
                                                   the delay is negative), then ``paired``
    {"ev":"paired","credentials":TOKEN}            the phone scanned or entered the code: store
                                                   TOKEN
    {"ev":"ready"}                                 live: messages flow
    {"ev":"logged_out"}                            the token is unknown; the connection stays
                                                   open and may ``connect`` again (without one)
    {"ev":"replaced"}                              another connection took the account; closed
    {"ev":"ack","id":MID,"status":"SENT"|"DELIVERED"|"READ"}
    {"ev":"inbound","id":ID,"from":SENDER,"text":TEXT}
    {"ev":"error","id":MID,"reason":REASON}        ``id`` only when the request had one
    {"ev":"error","op":"pair_code","reason":REASON}  a pairing code refused (``not_pairing``)
    {"ev":"stats",...}  {"ev":"pushed","id":ID}  {"ev":"dropped","account":A,"was_live":BOOL}

One live connection per account: when a second one becomes ready, the first gets
``replaced`` and is closed. Sends are deduplicated per account by message id: a resend
is re-acknowledged with the latest status and never delivered twice.
"""

from __future__ import annotations

import json
from typing import Any, Final

MAX_LINE_BYTES: Final = 16 * 1024 * 1024
"""Longest line either side accepts (a ``stats`` answer with ids can be large)."""

# Requests.
OP_CONNECT: Final = "connect"
OP_SEND: Final = "send"
OP_LOGOUT: Final = "logout"
OP_STATS: Final = "stats"
OP_PUSH: Final = "push"
OP_DROP: Final = "drop"
OP_PAIR_CODE: Final = "pair_code"

# Events.
EV_QR: Final = "qr"
EV_PAIRING_CODE: Final = "pairing_code"
EV_PAIRED: Final = "paired"
EV_READY: Final = "ready"
EV_LOGGED_OUT: Final = "logged_out"
EV_REPLACED: Final = "replaced"
EV_ACK: Final = "ack"
EV_INBOUND: Final = "inbound"
EV_ERROR: Final = "error"
EV_STATS: Final = "stats"
EV_PUSHED: Final = "pushed"
EV_DROPPED: Final = "dropped"

# Ack statuses are registry.MessageStatus values (SENT, DELIVERED, READ), spelled as such.

# Error reasons.
REASON_NOT_READY: Final = "not_ready"
REASON_NOT_LIVE: Final = "not_live"
REASON_BAD_REQUEST: Final = "bad_request"
REASON_ALREADY_CONNECTED: Final = "already_connected"
REASON_NOT_PAIRING: Final = "not_pairing"


class ProtocolError(ValueError):
    """A line that is not one JSON object."""


def encode_line(message: dict[str, Any]) -> bytes:
    """One message as a protocol line (compact JSON plus ``\\n``)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode_line(line: bytes) -> dict[str, Any]:
    """The JSON object on ``line``; raises :class:`ProtocolError` for anything else."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"not JSON: {error}") from error
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message
