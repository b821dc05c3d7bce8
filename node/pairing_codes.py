"""Pairing by phone number: when a session may be given a pairing code.

A code pairs the session instead of a QR scan (WhatsApp's "link with phone number"), so it is
only given while the session waits to be paired (``QR_PENDING``), and only for the number the
session was created with, if it was created with one. A session still starting will be waiting
in a moment: that is ``Unavailable`` with a retry hint (the gateway retries it within the
caller's deadline); any other state is ``WrongState`` (``FAILED_PRECONDITION``), an answer.
"""

from __future__ import annotations

from node.session_state import SessionState
from node.storage import SessionMeta
from registry import InvalidInput, Unavailable, WrongState

STARTING_RETRY_AFTER_MS = 200
"""Retry hint for a session that is starting: it shows its first QR code within moments."""


def check_pairable(meta: SessionMeta, phone_number: str) -> None:
    """Raise unless a session with ``meta`` may be given a pairing code for ``phone_number``
    (a valid, non-empty E.164 number)."""
    key = f"{meta.workspace_id}/{meta.session_id}"
    if meta.phone_number and meta.phone_number != phone_number:
        raise InvalidInput(
            f"phone_number {phone_number} is not the number session {key} was created with"
        )
    state = SessionState(meta.state)
    if state is SessionState.STARTING:
        raise Unavailable(
            f"session {key} is starting: a pairing code once it is qr_pending",
            retry_after_ms=STARTING_RETRY_AFTER_MS,
        )
    if state is not SessionState.QR_PENDING:
        raise WrongState(
            f"session {key} is {state.value}, not waiting to be paired (qr_pending): "
            "a pairing code is only given before the session is paired",
            state=state.value,
        )
