"""The opaque page tokens of ``ListSessions``: the session id a page resumes after."""

from __future__ import annotations

import base64
import binascii

from registry import InvalidInput, validate_id


def encode_page_token(session_id: str) -> str:
    """The opaque token that resumes a listing after ``session_id``."""
    return base64.urlsafe_b64encode(session_id.encode()).decode()


def decode_page_token(token: str) -> str:
    """The session_id a page token resumes after; raises ``InvalidInput`` for a bad token."""
    try:
        session_id = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        return validate_id(session_id, field="page_token")
    except (UnicodeError, binascii.Error, InvalidInput):
        raise InvalidInput(
            "page_token is invalid: pass a next_page_token from a previous response"
        ) from None
