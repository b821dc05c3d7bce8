"""Bearer tokens: what one grants, how it is written, and how it is stored (only as a hash).

A token reads ``smt_<id>_<secret>``: the id (12 hex digits) names its record in etcd and is
the only part ever logged or shown again; the secret is 32 random bytes (256 bits, URL-safe
base64). A record keeps a keyed BLAKE2b digest of the secret under a random per-token key,
never the secret: random tokens need no slow password hash (nothing to guess), so checking one
costs a dictionary lookup and one hash of 43 bytes.

A token is either a workspace's (``workspace_id`` and its scopes) or an admin token (every
RPC of every workspace, the ``AdminService`` and token management).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from registry.errors import InvalidInput, Unauthenticated
from registry.ids import validate_id

SESSIONS_READ = "sessions.read"
"""GetSession, ListSessions, GetQrCode, WatchSession."""
MESSAGES_SEND = "messages.send"
"""SendMessage."""
SESSIONS_MANAGE = "sessions.manage"
"""CreateSession, DeleteSession, RequestPairingCode."""
WEBHOOKS_MANAGE = "webhooks.manage"
"""The webhook API, once there is one."""
SCOPES = (SESSIONS_READ, MESSAGES_SEND, SESSIONS_MANAGE, WEBHOOKS_MANAGE)
"""Every scope a workspace token may hold."""

TOKEN_PREFIX = "smt_"
_ID_HEX_DIGITS = 12
_SECRET_BYTES = 32
_TOKEN_PATTERN = re.compile(r"smt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_DIGEST_BYTES = 32
MAX_NAME_CHARS = 128


def _digest(key: bytes, secret: str) -> str:
    return hashlib.blake2b(secret.encode(), key=key, digest_size=_DIGEST_BYTES).hexdigest()


def parse_token(text: str) -> tuple[str, str]:
    """``(token_id, secret)`` of a token's text; ``Unauthenticated`` if it is not one (the
    message never repeats the text)."""
    match = _TOKEN_PATTERN.fullmatch(text)
    if match is None:
        raise Unauthenticated("the bearer token is malformed")
    return match.group(1), match.group(2)


def validate_token_id(text: str) -> str:
    """``text`` if it is a token id (12 hex digits); ``InvalidInput`` otherwise."""
    if not _TOKEN_ID.fullmatch(text):
        raise InvalidInput("token_id is 12 hex digits (the id, not the token)")
    return text


def token_id_of(text: str) -> str:
    """The id of a token's text, or ``"?"`` for text that is not a token: safe to log."""
    match = _TOKEN_PATTERN.fullmatch(text)
    return "?" if match is None else match.group(1)


@dataclass(frozen=True)
class TokenRecord:
    """What etcd holds about one token: what it grants, and a digest of its secret."""

    token_id: str
    workspace_id: str
    """The workspace it is for; empty for an admin token."""
    scopes: tuple[str, ...]
    is_admin: bool
    key: str
    """The per-token hashing key (hex)."""
    digest: str
    """Keyed BLAKE2b of the secret (hex)."""
    created_at: float
    expires_at: float = 0.0
    """Unix time after which it is refused; 0: never."""
    name: str = ""
    """What the operator called it (``--name``), for ``meshctl token list``."""

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this token's (in constant time)."""
        return hmac.compare_digest(_digest(bytes.fromhex(self.key), secret), self.digest)

    def is_expired(self, now: float | None = None) -> bool:
        """Whether the token's time is over."""
        return bool(self.expires_at) and (time.time() if now is None else now) >= self.expires_at

    def grants(self, workspace_id: str, scope: str) -> bool:
        """Whether the token allows ``scope`` on ``workspace_id``."""
        return self.is_admin or (workspace_id == self.workspace_id and scope in self.scopes)

    def to_json(self) -> bytes:
        """The stored form."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, value: bytes) -> TokenRecord:
        """A stored record; ``ValueError`` or ``TypeError`` if it is not one."""
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("a token record is a JSON object")
        data["scopes"] = tuple(data.get("scopes", ()))
        record = cls(**data)
        if not _TOKEN_ID.fullmatch(record.token_id):
            raise ValueError("a token id is 12 hex digits")
        if not all(isinstance(each, str) for each in record.scopes):
            raise ValueError("scopes are strings")
        bytes.fromhex(record.key)
        return record


@dataclass(frozen=True)
class IssuedToken:
    """A new token: its text (shown once) and its record (stored)."""

    text: str = field(repr=False)
    record: TokenRecord


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """``scopes`` deduplicated in a stable order; ``InvalidInput`` naming an unknown one."""
    chosen = set(scopes)
    unknown = sorted(chosen - set(SCOPES))
    if unknown:
        raise InvalidInput(f"unknown scope {unknown[0]!r}: the scopes are {', '.join(SCOPES)}")
    if not chosen:
        raise InvalidInput(f"a workspace token needs at least one scope: {', '.join(SCOPES)}")
    return tuple(scope for scope in SCOPES if scope in chosen)


def _record_for(
    token_id: str,
    secret: str,
    *,
    workspace_id: str,
    scopes: tuple[str, ...],
    is_admin: bool,
    expires_at: float,
    name: str,
) -> TokenRecord:
    key = secrets.token_bytes(16)
    return TokenRecord(
        token_id=token_id,
        workspace_id=workspace_id,
        scopes=scopes,
        is_admin=is_admin,
        key=key.hex(),
        digest=_digest(key, secret),
        created_at=time.time(),
        expires_at=expires_at,
        name=name,
    )


def _validate_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidInput(f"name is invalid: at most {MAX_NAME_CHARS} printable characters")
    return name


def issue_token(
    *,
    workspace_id: str = "",
    scopes: Iterable[str] = (),
    is_admin: bool = False,
    expires_at: float = 0.0,
    name: str = "",
) -> IssuedToken:
    """A fresh random token for ``workspace_id`` with ``scopes``, or an admin token."""
    if is_admin:
        if workspace_id:
            raise InvalidInput("an admin token is for every workspace: give no workspace_id")
        chosen: tuple[str, ...] = ()
    else:
        workspace_id = validate_id(workspace_id, field="workspace_id")
        chosen = validate_scopes(scopes)
    if expires_at and expires_at <= time.time():
        raise InvalidInput("the expiry is in the past")
    token_id = secrets.token_hex(_ID_HEX_DIGITS // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
    record = _record_for(
        token_id,
        secret,
        workspace_id=workspace_id,
        scopes=chosen,
        is_admin=is_admin,
        expires_at=expires_at,
        name=_validate_name(name),
    )
    return IssuedToken(text=f"{TOKEN_PREFIX}{token_id}_{secret}", record=record)


def admin_record_of(text: str, *, name: str = "bootstrap") -> TokenRecord:
    """The record of an admin token whose text an operator supplied (``--admin-token-file``);
    ``InvalidInput`` if the text is not a token (the message never repeats it)."""
    try:
        token_id, secret = parse_token(text)
    except Unauthenticated:
        raise InvalidInput(
            "the admin token file does not hold a token (smt_<12 hex>_<43 base64url>): "
            "create one with `meshctl token new-admin`"
        ) from None
    return _record_for(
        token_id, secret, workspace_id="", scopes=(), is_admin=True, expires_at=0.0, name=name
    )


def new_admin_token_text() -> str:
    """The text of a fresh admin token, for an operator to put in ``--admin-token-file``."""
    return issue_token(is_admin=True).text
