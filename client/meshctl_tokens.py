"""``meshctl token …``: create, list and revoke bearer tokens (through the gateway's
``TokenService``, with the admin token), and ``token new-admin`` to write the first admin
token a gateway bootstraps from ``--admin-token-file``."""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from client._progress import CALL_TIMEOUT_SECONDS
from client.meshctl_app import (
    DEFAULT_GATEWAY,
    GatewayOption,
    JsonOption,
    app,
    err,
    fail,
    out,
    print_json,
    run_token_call,
)
from protos import token_pb2
from registry.auth import (
    SCOPES,
    new_admin_token_text,
)

tokens = typer.Typer(help="Bearer tokens: create, list, revoke (admin token needed).")
app.add_typer(tokens, name="token")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` → seconds; ``BadParameter`` otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 30d, 12h, 90m or 3600s")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _when(unix_seconds: float) -> str:
    if not unix_seconds:
        return "never"
    moment = datetime.datetime.fromtimestamp(unix_seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@tokens.command("create")
def create(
    *,
    workspace: Annotated[
        str, typer.Option("--workspace", help="The workspace the token is for.")
    ] = "",
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help=f"Repeat for each: {', '.join(SCOPES)}."),
    ] = None,
    expires: Annotated[
        str, typer.Option("--expires", help="Lifetime: 30d, 12h, 90m, 3600s; default never.")
    ] = "",
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin token (every workspace, admin API).")
    ] = False,
    name: Annotated[str, typer.Option("--name", help="What to call it in token list.")] = "",
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Create a token and print it, once: it cannot be shown again."""
    request = token_pb2.CreateTokenRequest(
        workspace_id=workspace,
        scopes=scope or [],
        expires_in_seconds=parse_duration(expires) if expires else 0.0,
        admin=admin,
        name=name,
    )
    reply: token_pb2.CreateTokenResponse = run_token_call(
        gateway, lambda stub: stub.CreateToken(request, timeout=CALL_TIMEOUT_SECONDS)
    )
    if as_json:
        print_json(reply)
        return
    info = reply.info
    grants = "admin" if info.admin else f"{info.workspace_id}: {', '.join(info.scopes)}"
    err.print(f"token {info.token_id} ({grants}; expires {_when(info.expires_at)})")
    err.print("[yellow]shown once: store it now[/yellow]")
    sys.stdout.write(reply.token + "\n")


@tokens.command("list")
def list_tokens(
    workspace: Annotated[
        str, typer.Option("--workspace", help="Only this workspace's tokens.")
    ] = "",
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """List the tokens: ids and what they grant (never the tokens themselves)."""
    reply: token_pb2.ListTokensResponse = run_token_call(
        gateway,
        lambda stub: stub.ListTokens(
            token_pb2.ListTokensRequest(workspace_id=workspace), timeout=CALL_TIMEOUT_SECONDS
        ),
    )
    if as_json:
        print_json(reply)
        return
    table = Table(title=f"tokens ({len(reply.tokens)})")
    for column in ("id", "workspace", "scopes", "name", "created", "expires"):
        table.add_column(column)
    for info in reply.tokens:
        table.add_row(
            info.token_id,
            "(admin)" if info.admin else info.workspace_id,
            "all" if info.admin else ", ".join(info.scopes),
            info.name or "-",
            _when(info.created_at),
            _when(info.expires_at),
        )
    out.print(table)


@tokens.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (12 hex digits).")],
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Revoke a token: every gateway and node refuses it within a second."""
    reply: token_pb2.RevokeTokenResponse = run_token_call(
        gateway,
        lambda stub: stub.RevokeToken(
            token_pb2.RevokeTokenRequest(token_id=token_id), timeout=CALL_TIMEOUT_SECONDS
        ),
    )
    if as_json:
        print_json(reply)
        return
    out.print(f"revoked {reply.info.token_id}")


@tokens.command("new-admin")
def new_admin(
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Write it to this file (mode 0600) instead of stdout."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Make a fresh admin token locally, for --admin-token-file (no gateway needed)."""
    text = new_admin_token_text()
    if to is not None:
        try:
            to.touch(mode=0o600, exist_ok=False)
        except FileExistsError:
            fail(f"{to} exists: not overwritten")
        to.write_text(text + "\n")
        message = {"path": str(to)}
        if as_json:
            sys.stdout.write(json.dumps(message) + "\n")
        else:
            out.print(f"admin token written to {to}")
        return
    if as_json:
        sys.stdout.write(json.dumps({"token": text}) + "\n")
        return
    sys.stdout.write(text + "\n")
