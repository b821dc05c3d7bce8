"""Who may make a call: the scope each RPC needs, the bearer token it carries, and the two
policies a process runs — :class:`TokenAccess` (the default) and :class:`OpenAccess`
(``--auth off``, for local experiments only, with a warning at start and every hour).

Gateways check before they forward and nodes check again before they serve, each from its own
watch-fed :class:`registry.auth.store.TokenCache`: a call straight to a node (or through the
proxyless client) meets the same rules as one through the gateway. Errors name a token by its
id only, never by its text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

import aetcd
import structlog

from registry.auth.settings import AuthSettings
from registry.auth.store import TokenCache, store_token_if_absent
from registry.auth.tokens import (
    MESSAGES_SEND,
    SESSIONS_MANAGE,
    SESSIONS_READ,
    WEBHOOKS_MANAGE,
    TokenRecord,
    parse_token,
)
from registry.background import stop_task
from registry.errors import PermissionDenied, Unauthenticated
from registry.keys import ClusterKeys

AUTHORIZATION_KEY = "authorization"
"""The metadata key of ``authorization: Bearer <token>``."""
_BEARER = "bearer "

SESSION_METHOD_SCOPES: dict[str, str] = {
    "CreateSession": SESSIONS_MANAGE,
    "DeleteSession": SESSIONS_MANAGE,
    "GetSession": SESSIONS_READ,
    "ListSessions": SESSIONS_READ,
    "GetQrCode": SESSIONS_READ,
    "RequestPairingCode": SESSIONS_MANAGE,
    "WatchSession": SESSIONS_READ,
    "SendMessage": MESSAGES_SEND,
}
"""The scope each ``SessionService`` method needs (a method not listed: admin tokens only)."""
WEBHOOK_METHOD_SCOPES: dict[str, str] = {
    name: WEBHOOKS_MANAGE
    for name in (
        "SetWebhook",
        "GetWebhook",
        "DeleteWebhook",
        "RotateWebhookSecret",
        "ListDeadLetters",
        "ReplayDeadLetters",
        "SendTestEvent",
    )
}
"""The scope each ``WebhookService`` method needs."""
_METHOD_SCOPES = {**SESSION_METHOD_SCOPES, **WEBHOOK_METHOD_SCOPES}

AUTH_OFF_WARNING_SECONDS = 3600.0
"""How often a process with ``--auth off`` says so again."""

_log = structlog.get_logger(__name__)


def bearer_of(metadata: Iterable[Any] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None without one."""
    for item in metadata or ():
        if item[0] == AUTHORIZATION_KEY:
            return bearer_text(item[1])
    return None


def bearer_text(value: str | bytes) -> str:
    """The token in an ``authorization`` value; empty if it is not ``Bearer <token>``."""
    if isinstance(value, str) and value[: len(_BEARER)].lower() == _BEARER:
        return value[len(_BEARER) :].strip()
    return ""


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that carries ``token``."""
    return ((AUTHORIZATION_KEY, f"Bearer {token}"),)


class Access(Protocol):
    """A process's policy: raise ``Unauthenticated`` or ``PermissionDenied``, or return."""

    def authenticate(self, bearer: str | None) -> None:
        """Is ``bearer`` a valid token at all (a request that did not parse)."""

    def check_workspace(self, bearer: str | None, method: str, workspace_id: str) -> None:
        """May a caller with ``bearer`` call ``<method>`` (of ``SessionService`` or
        ``WebhookService``) on ``workspace_id``."""

    def check_admin(self, bearer: str | None, method: str) -> None:
        """May a caller with ``bearer`` call the admin RPC ``method``."""


class OpenAccess:
    """``--auth off``: every call is allowed."""

    def authenticate(self, bearer: str | None) -> None:
        """Allow."""

    def check_workspace(self, bearer: str | None, method: str, workspace_id: str) -> None:
        """Allow."""

    def check_admin(self, bearer: str | None, method: str) -> None:
        """Allow."""


class _TokenLookup(Protocol):
    def get(self, token_id: str) -> TokenRecord | None: ...


class TokenAccess:
    """Tokens required: checked against a watch-fed copy of the stored records."""

    def __init__(self, tokens: _TokenLookup) -> None:
        self._tokens = tokens

    def _record(self, bearer: str | None) -> TokenRecord:
        if bearer is None:
            raise Unauthenticated("this call needs a token: send authorization: Bearer <token>")
        if not bearer:
            raise Unauthenticated("the authorization metadata must read: Bearer <token>")
        token_id, secret = parse_token(bearer)
        record = self._tokens.get(token_id)
        if record is None or not record.matches(secret):
            raise Unauthenticated(f"token {token_id} is unknown or revoked")
        if record.is_expired():
            raise Unauthenticated(f"token {token_id} has expired")
        return record

    def authenticate(self, bearer: str | None) -> None:
        """Raise unless ``bearer`` is a valid token."""
        self._record(bearer)

    def check_workspace(self, bearer: str | None, method: str, workspace_id: str) -> None:
        """Raise unless the token is valid and grants the method's scope on ``workspace_id``."""
        record = self._record(bearer)
        if record.is_admin:
            return
        scope = _METHOD_SCOPES.get(method)
        if scope is None:
            raise PermissionDenied(f"{method} needs an admin token")
        if record.workspace_id != workspace_id:
            raise PermissionDenied(f"token {record.token_id} is not for workspace {workspace_id!r}")
        if scope not in record.scopes:
            raise PermissionDenied(f"token {record.token_id} lacks the scope {scope} ({method})")

    def check_admin(self, bearer: str | None, method: str) -> None:
        """Raise unless the token is a valid admin token."""
        record = self._record(bearer)
        if not record.is_admin:
            raise PermissionDenied(f"{method} needs an admin token; {record.token_id} is not one")


class AccessControl:
    """What :func:`open_access` started: the policy, and what to stop with the process."""

    def __init__(
        self, access: Access, *, cache: TokenCache | None, warning: asyncio.Task[None] | None
    ) -> None:
        self.access = access
        self.cache = cache
        self._warning = warning

    async def stop(self) -> None:
        """Stop the watch (or the warnings)."""
        await stop_task(self._warning)
        if self.cache is not None:
            await self.cache.stop()


async def _warn_while_open(process: str) -> None:
    while True:
        _log.warning(
            "auth_off",
            process=process,
            detail="--auth off: every caller may call everything; for local experiments only",
        )
        await asyncio.sleep(AUTH_OFF_WARNING_SECONDS)


async def open_access(
    settings: AuthSettings, client: aetcd.Client, keys: ClusterKeys, *, process: str
) -> AccessControl:
    """The policy ``settings`` ask for, started: the bootstrap admin token stored (if one was
    given and its id is not stored yet) and the token cache following etcd; or, with auth
    off, the warnings begun. Raises ``Unavailable`` if etcd does not answer."""
    if not settings.is_enabled:
        warning = asyncio.create_task(_warn_while_open(process), name="auth-off-warning")
        return AccessControl(OpenAccess(), cache=None, warning=warning)
    if settings.admin_record is not None:
        created = await store_token_if_absent(client, keys, settings.admin_record)
        _log.info(
            "admin_token_bootstrapped" if created else "admin_token_present",
            token_id=settings.admin_record.token_id,
        )
    cache = TokenCache(client, keys)
    await cache.start()
    _log.info("tokens_loaded", count=len(cache.snapshot()))
    return AccessControl(TokenAccess(cache), cache=cache, warning=None)
