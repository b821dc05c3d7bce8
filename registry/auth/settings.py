"""How a gateway or node checks callers: ``--auth`` (tokens, the default, or off) and
``--admin-token-file``, with their environment fallbacks."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from registry.auth.tokens import TokenRecord, admin_record_of
from registry.errors import InvalidInput
from registry.flags import first_set

AUTH_VARIABLE = "SESSIONMESH_AUTH"
ADMIN_TOKEN_FILE_VARIABLE = "SESSIONMESH_ADMIN_TOKEN_FILE"
AUTH_TOKENS = "tokens"
AUTH_OFF = "off"
AUTH_MODES = (AUTH_TOKENS, AUTH_OFF)


@dataclass(frozen=True)
class AuthSettings:
    """Whether tokens are required, and the bootstrap admin token's record (its hash)."""

    is_enabled: bool = True
    admin_record: TokenRecord | None = None


AUTH_OFF_SETTINGS = AuthSettings(is_enabled=False)
"""``--auth off``."""
TOKENS_REQUIRED = AuthSettings()
"""The default: tokens required, no bootstrap admin token."""


def add_auth_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """``--auth`` and ``--admin-token-file``."""
    parser.add_argument(
        "--auth",
        default=first_set(environ, AUTH_VARIABLE) or AUTH_TOKENS,
        help=(
            f"'{AUTH_TOKENS}': every call needs a bearer token; '{AUTH_OFF}': none does, for "
            f"local experiments only (env {AUTH_VARIABLE}; default %(default)s)"
        ),
    )
    parser.add_argument(
        "--admin-token-file",
        default=first_set(environ, ADMIN_TOKEN_FILE_VARIABLE),
        help=(
            "a file holding the first admin token, stored (as a hash) if its id is new "
            f"(env {ADMIN_TOKEN_FILE_VARIABLE}; `meshctl token new-admin` writes one)"
        ),
    )


def auth_from_args(args: argparse.Namespace) -> AuthSettings:
    """The settings the flags ask for; ``InvalidInput`` for a bad mode or token file."""
    mode = str(args.auth).strip().lower()
    if mode not in AUTH_MODES:
        raise InvalidInput(f"--auth {args.auth!r} must be one of {', '.join(AUTH_MODES)}")
    if mode == AUTH_OFF:
        return AUTH_OFF_SETTINGS
    if not args.admin_token_file:
        return TOKENS_REQUIRED
    path = Path(args.admin_token_file)
    try:
        text = path.read_text().strip()
    except OSError as error:
        raise InvalidInput(f"--admin-token-file {path}: {error.strerror}") from None
    return AuthSettings(admin_record=admin_record_of(text))
