"""A webhook as the mesh stores it: where events go, which ones, and the secrets that sign
them (the current one first; after a rotation the previous one too, until its overlap ends).

Secrets are Standard Webhooks secrets, ``whsec_`` and the base64 of 24 to 64 random bytes.
They must be kept readable (every delivery signs with them), so the record holds them as they
are: etcd's access is limited to the cluster's role (``deploy.etcd_access``), and backups of
it are encrypted. They never appear in a log, a span or an answer other than the one that
created them.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from registry.errors import InvalidInput

SESSION_STATE_CHANGED = "session.state_changed"
SESSION_QR = "session.qr"
SESSION_MOVED = "session.moved"
MESSAGE_ACCEPTED = "message.accepted"
MESSAGE_SENT = "message.sent"
MESSAGE_DELIVERED = "message.delivered"
MESSAGE_READ = "message.read"
MESSAGE_FAILED = "message.failed"
MESSAGE_RECEIVED = "message.received"
WEBHOOK_TEST = "webhook.test"
EVENT_TYPES = (
    SESSION_STATE_CHANGED,
    SESSION_QR,
    SESSION_MOVED,
    MESSAGE_ACCEPTED,
    MESSAGE_SENT,
    MESSAGE_DELIVERED,
    MESSAGE_READ,
    MESSAGE_FAILED,
    MESSAGE_RECEIVED,
)
"""The event types a webhook may subscribe to (``webhook.test`` is always delivered)."""

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_OVERLAP_SECONDS = 24 * 3600
"""How long a rotated-out secret keeps signing, unless the rotation says otherwise."""
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
MAX_URL_CHARS = 2048


def new_secret() -> str:
    """A fresh secret: ``whsec_`` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def validate_secret(secret: str) -> str:
    """``secret`` if it is a usable Standard Webhooks secret, else ``InvalidInput`` (which
    never repeats the secret)."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidInput(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("a webhook secret is whsec_ and base64") from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise InvalidInput(
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes "
            f"(this one {len(raw)})"
        )
    return secret


def validate_event_types(event_types: Iterable[str]) -> tuple[str, ...]:
    """The chosen types in their canonical order (none: every type); ``InvalidInput`` for
    an unknown one."""
    chosen = set(event_types)
    unknown = sorted(chosen - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput(
            f"unknown event type {unknown[0][:64]!r}: the types are {', '.join(EVENT_TYPES)}"
        )
    return tuple(kind for kind in EVENT_TYPES if kind in chosen)


def new_webhook_id() -> str:
    """``wh_`` and 16 hex digits."""
    return f"wh_{secrets.token_hex(8)}"


@dataclass(frozen=True)
class SigningSecret:
    """One secret, and until when it signs (None: until rotated out)."""

    secret: str = field(repr=False)
    expires_at_unix: float | None = None

    def is_valid(self, now_unix: float) -> bool:
        """Whether it still signs at ``now_unix``."""
        return self.expires_at_unix is None or now_unix < self.expires_at_unix


@dataclass(frozen=True)
class WebhookRecord:
    """A workspace's webhook, or (``workspace_id`` empty) the mesh default."""

    webhook_id: str
    workspace_id: str
    url: str
    event_types: tuple[str, ...]
    created_at_unix: float
    secrets: tuple[SigningSecret, ...] = field(repr=False)

    @property
    def is_default(self) -> bool:
        """Whether this is the mesh-wide default."""
        return not self.workspace_id

    def wants(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to it."""
        return event_type == WEBHOOK_TEST or not self.event_types or event_type in self.event_types

    def signing_secrets(self, now_unix: float) -> list[str]:
        """The secrets that sign a delivery made at ``now_unix`` (the current one first)."""
        return [each.secret for each in self.secrets if each.is_valid(now_unix)]

    @property
    def previous_secret_expires_at_unix(self) -> float | None:
        """Until when the rotated-out secret signs; None without one."""
        expiring = [each.expires_at_unix for each in self.secrets[1:] if each.expires_at_unix]
        return max(expiring) if expiring else None

    def rotated(self, secret: str, *, overlap_seconds: float, now_unix: float) -> WebhookRecord:
        """This webhook with ``secret`` current and the current one signing for the overlap."""
        current = self.secrets[0] if self.secrets else None
        kept = (
            []
            if current is None
            else [replace(current, expires_at_unix=now_unix + overlap_seconds)]
        )
        return replace(self, secrets=(SigningSecret(secret), *kept))

    def to_json(self) -> bytes:
        """The stored form."""
        return json.dumps(
            {
                "id": self.webhook_id,
                "workspace_id": self.workspace_id,
                "url": self.url,
                "event_types": list(self.event_types),
                "created_at": self.created_at_unix,
                "secrets": [
                    {"secret": each.secret, "expires_at": each.expires_at_unix}
                    for each in self.secrets
                ],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WebhookRecord:
        """Parse the stored form; ``ValueError``/``TypeError``/``KeyError`` if it is not one."""
        raw: dict[str, Any] = json.loads(data)
        return cls(
            webhook_id=str(raw["id"]),
            workspace_id=str(raw["workspace_id"]),
            url=str(raw["url"]),
            event_types=tuple(str(kind) for kind in raw["event_types"]),
            created_at_unix=float(raw["created_at"]),
            secrets=tuple(
                SigningSecret(
                    secret=str(each["secret"]),
                    expires_at_unix=None
                    if each.get("expires_at") is None
                    else float(each["expires_at"]),
                )
                for each in raw["secrets"]
            ),
        )


def new_record(
    *, workspace_id: str, url: str, event_types: Iterable[str], secret: str
) -> tuple[WebhookRecord, str]:
    """A new webhook record and its secret (``secret`` if given, else a new one)."""
    chosen = validate_secret(secret) if secret else new_secret()
    record = WebhookRecord(
        webhook_id=new_webhook_id(),
        workspace_id=workspace_id,
        url=url,
        event_types=validate_event_types(event_types),
        created_at_unix=time.time(),
        secrets=(SigningSecret(chosen),),
    )
    return record, chosen
