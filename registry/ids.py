"""Validation of the ids that name folders on shared storage and keys in etcd.

Ids are letters, digits, ``-`` and ``_``, 1 to 64 characters: nothing can
escape its folder (no ``/``, no ``..``) or break an etcd key.
"""

from __future__ import annotations

import re

from registry.errors import InvalidInput

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_ID_LENGTH = 64
MAX_TEXT_CHARS = 4096
"""The longest message text ``SendMessage`` accepts."""
MAX_RECIPIENT_CHARS = 128
MAX_DETAILS_CHARS = 4096
"""The longest free text (``DeleteSession``'s details) the API takes, and the accounts DB keeps."""
MAX_LABELS = 32
MAX_LABEL_CHARS = 256
PHONE_PATTERN = re.compile(r"\+?[0-9]{5,20}")


def validate_id(value: str, *, field: str) -> str:
    """Return ``value`` if it is a valid id, else raise ``InvalidInput`` naming ``field``."""
    if not value:
        raise InvalidInput(f"{field} is required")
    if ID_PATTERN.fullmatch(value) is None:
        shown = value if len(value) <= 80 else value[:80] + "…"
        raise InvalidInput(
            f"{field} {shown!r} is invalid: use 1 to {MAX_ID_LENGTH} letters, digits, '-' or '_'"
        )
    return value


def validate_phone_number(value: str) -> str:
    """Return ``value`` if empty or a plausible E.164 number, else raise ``InvalidInput``."""
    if value and PHONE_PATTERN.fullmatch(value) is None:
        raise InvalidInput(f"phone_number {value[:40]!r} is invalid: use 5 to 20 digits, '+' first")
    return value


def validate_text(value: str) -> str:
    """Return ``value`` if it is a non-empty message of at most ``MAX_TEXT_CHARS`` characters."""
    if not value:
        raise InvalidInput("text is required")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInput(f"text has {len(value)} characters; the limit is {MAX_TEXT_CHARS}")
    return value


def validate_free_text(value: str, *, field: str, max_chars: int = MAX_DETAILS_CHARS) -> str:
    """Return ``value`` if every accounts database can store it — at most ``max_chars``
    characters, no NUL (PostgreSQL refuses it), no lone surrogate (no driver encodes one) —
    else raise ``InvalidInput`` naming ``field``."""
    if len(value) > max_chars:
        raise InvalidInput(f"{field} has {len(value)} characters; the limit is {max_chars}")
    if "\x00" in value:
        raise InvalidInput(f"{field} contains a NUL character (U+0000), which cannot be stored")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidInput(
                f"{field} is not valid UTF-8: a lone surrogate at character {error.start}"
            ) from None
    return value


def validate_recipient(value: str) -> str:
    """Return ``value`` if it is a non-empty recipient of at most ``MAX_RECIPIENT_CHARS``."""
    if not value:
        raise InvalidInput("to is required")
    if len(value) > MAX_RECIPIENT_CHARS or not value.isprintable():
        raise InvalidInput(f"to is invalid: at most {MAX_RECIPIENT_CHARS} printable characters")
    return value


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    """Return ``labels`` if they are few and short enough, else raise ``InvalidInput``."""
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"labels has {len(labels)} entries; the limit is {MAX_LABELS}")
    for key, value in labels.items():
        if len(key) > MAX_LABEL_CHARS or len(value) > MAX_LABEL_CHARS:
            raise InvalidInput(f"label {key[:40]!r} is longer than {MAX_LABEL_CHARS} characters")
    return labels
