"""``meshctl webhook …``: a workspace's webhook (set, get, delete, rotate-secret, test), its
dead letters (dead-letters, replay), and the mesh-wide default (set-default, get-default,
delete-default; admin token). Workspace commands go through the gateway's ``WebhookService``
to the workspace's node: a token with ``webhooks.manage`` on the workspace, or an admin one.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.timestamp_pb2 import Timestamp
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
    run_stub_call,
)
from protos import webhook_pb2, webhook_pb2_grpc
from registry.webhooks import EVENT_TYPES

webhooks = typer.Typer(help="Webhooks: where session events are POSTed, signed and retried.")
app.add_typer(webhooks, name="webhook")

WorkspaceArgument = Annotated[str, typer.Argument(help="The workspace.")]
EventOption = Annotated[
    list[str] | None,
    typer.Option(
        "--event", help=f"Only these types (repeat); default all: {', '.join(EVENT_TYPES)}."
    ),
]
SecretFileOption = Annotated[
    Path | None,
    typer.Option(
        "--secret-file", help="Sign with the secret in this file (whsec_…); default: a new one."
    ),
]
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _secret_from(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text().strip()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")


def _when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    moment = datetime.datetime.fromtimestamp(stamp.seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(text: str) -> int:
    text = text.strip()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise typer.BadParameter(f"{text!r} is not a duration like 3600, 90m, 24h or 7d")
    return int(number) * (unit or 1)


def _show(webhook: webhook_pb2.Webhook, *, title: str) -> None:
    types = ", ".join(webhook.event_types) or "all events"
    out.print(
        f"{title} {webhook.id}: {webhook.url} ({types}); created {_when(webhook.create_time)}"
    )
    if webhook.HasField("previous_secret_expire_time"):
        out.print(
            f"  the previous secret signs too until {_when(webhook.previous_secret_expire_time)}"
        )
    if webhook.secret:
        err.print("[yellow]the signing secret, shown once: store it now[/yellow]")
        sys.stdout.write(webhook.secret + "\n")


def _call_workspace(gateway: str, method: str, request: object) -> object:
    return run_stub_call(
        gateway,
        webhook_pb2_grpc.WebhookServiceStub,
        lambda stub: getattr(stub, method)(request, timeout=CALL_TIMEOUT_SECONDS),
    )


def _call_admin(gateway: str, method: str, request: object) -> object:
    return run_stub_call(
        gateway,
        webhook_pb2_grpc.WebhookAdminServiceStub,
        lambda stub: getattr(stub, method)(request, timeout=CALL_TIMEOUT_SECONDS),
    )


@webhooks.command("set")
def set_webhook(
    workspace: WorkspaceArgument,
    url: Annotated[str, typer.Argument(help="Where to POST the events (http:// or https://).")],
    *,
    event: EventOption = None,
    secret_file: SecretFileOption = None,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Point a workspace's events at URL (replaces its webhook; prints the secret once)."""
    request = webhook_pb2.SetWebhookRequest(
        workspace_id=workspace, url=url, event_types=event or [], secret=_secret_from(secret_file)
    )
    reply = _call_workspace(gateway, "SetWebhook", request)
    assert isinstance(reply, webhook_pb2.SetWebhookResponse)
    if as_json:
        print_json(reply)
        return
    _show(reply.webhook, title=f"{workspace}: webhook")


@webhooks.command("get")
def get_webhook(
    workspace: WorkspaceArgument,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Show a workspace's own webhook (never its secret)."""
    reply = _call_workspace(
        gateway, "GetWebhook", webhook_pb2.GetWebhookRequest(workspace_id=workspace)
    )
    assert isinstance(reply, webhook_pb2.GetWebhookResponse)
    if as_json:
        print_json(reply)
        return
    _show(reply.webhook, title=f"{workspace}: webhook")


@webhooks.command("delete")
def delete_webhook(
    workspace: WorkspaceArgument,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Remove a workspace's webhook (the mesh default applies again, if set)."""
    reply = _call_workspace(
        gateway, "DeleteWebhook", webhook_pb2.DeleteWebhookRequest(workspace_id=workspace)
    )
    assert isinstance(reply, webhook_pb2.DeleteWebhookResponse)
    if as_json:
        print_json(reply)
        return
    out.print(f"{workspace}: webhook {reply.webhook.id} deleted")


@webhooks.command("rotate-secret")
def rotate_secret(
    workspace: WorkspaceArgument,
    overlap: Annotated[
        str, typer.Option("--overlap", help="How long the old secret keeps signing: 90m, 24h, 7d.")
    ] = "24h",
    secret_file: SecretFileOption = None,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """A new signing secret (printed once); the old one signs too for --overlap."""
    request = webhook_pb2.RotateWebhookSecretRequest(
        workspace_id=workspace, overlap_seconds=_seconds(overlap), secret=_secret_from(secret_file)
    )
    reply = _call_workspace(gateway, "RotateWebhookSecret", request)
    assert isinstance(reply, webhook_pb2.RotateWebhookSecretResponse)
    if as_json:
        print_json(reply)
        return
    _show(reply.webhook, title=f"{workspace}: webhook")


@webhooks.command("dead-letters")
def dead_letters(
    workspace: WorkspaceArgument,
    page_size: Annotated[
        int, typer.Option("--page-size", help="Letters per page (at most 1000).")
    ] = 50,
    page_token: Annotated[str, typer.Option("--page-token", help="From a previous page.")] = "",
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """List the events the retries gave up on, oldest first."""
    request = webhook_pb2.ListDeadLettersRequest(
        workspace_id=workspace, page_size=page_size, page_token=page_token
    )
    reply = _call_workspace(gateway, "ListDeadLetters", request)
    assert isinstance(reply, webhook_pb2.ListDeadLettersResponse)
    if as_json:
        print_json(reply)
        return
    table = Table(title=f"{workspace}: dead letters ({len(reply.dead_letters)})")
    for column in ("event id", "session", "type", "event time", "attempts", "last error"):
        table.add_column(column)
    for letter in reply.dead_letters:
        table.add_row(
            letter.event_id,
            letter.session_id,
            letter.type,
            _when(letter.event_time),
            str(letter.attempts),
            letter.last_error,
        )
    out.print(table)
    if reply.next_page_token:
        out.print(f"more: --page-token {reply.next_page_token}")


@webhooks.command("replay")
def replay(
    workspace: WorkspaceArgument,
    event_ids: Annotated[
        list[str] | None, typer.Argument(help="The dead letters' event ids.")
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Every dead letter of the workspace.")
    ] = False,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Deliver dead letters again (each leaves the list once delivered)."""
    if not event_ids and not replay_all:
        fail("name the event ids to replay, or pass --all")
    request = webhook_pb2.ReplayDeadLettersRequest(
        workspace_id=workspace, event_ids=event_ids or [], all=replay_all
    )
    reply = _call_workspace(gateway, "ReplayDeadLetters", request)
    assert isinstance(reply, webhook_pb2.ReplayDeadLettersResponse)
    if as_json:
        print_json(reply)
        return
    out.print(f"{workspace}: {reply.replayed} dead letters queued for delivery")


@webhooks.command("test")
def send_test(
    workspace: WorkspaceArgument,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """POST one signed webhook.test event now and show how the receiver answered."""
    reply = _call_workspace(
        gateway, "SendTestEvent", webhook_pb2.SendTestEventRequest(workspace_id=workspace)
    )
    assert isinstance(reply, webhook_pb2.SendTestEventResponse)
    if as_json:
        print_json(reply)
        return
    if reply.error:
        fail(f"{reply.url}: {reply.error} (event {reply.event_id})")
    out.print(f"{reply.url}: HTTP {reply.http_status} (event {reply.event_id})")


@webhooks.command("set-default")
def set_default(
    url: Annotated[
        str, typer.Argument(help="Where to POST the events of workspaces without a webhook.")
    ],
    event: EventOption = None,
    secret_file: SecretFileOption = None,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Set the mesh-wide default webhook (admin token; prints the secret once)."""
    request = webhook_pb2.SetDefaultWebhookRequest(
        url=url, event_types=event or [], secret=_secret_from(secret_file)
    )
    reply = _call_admin(gateway, "SetDefaultWebhook", request)
    assert isinstance(reply, webhook_pb2.SetDefaultWebhookResponse)
    if as_json:
        print_json(reply)
        return
    _show(reply.webhook, title="default webhook")


@webhooks.command("get-default")
def get_default(gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False) -> None:
    """Show the mesh-wide default webhook (admin token)."""
    reply = _call_admin(gateway, "GetDefaultWebhook", webhook_pb2.GetDefaultWebhookRequest())
    assert isinstance(reply, webhook_pb2.GetDefaultWebhookResponse)
    if as_json:
        print_json(reply)
        return
    _show(reply.webhook, title="default webhook")


@webhooks.command("delete-default")
def delete_default(gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False) -> None:
    """Remove the mesh-wide default webhook (admin token)."""
    reply = _call_admin(gateway, "DeleteDefaultWebhook", webhook_pb2.DeleteDefaultWebhookRequest())
    assert isinstance(reply, webhook_pb2.DeleteDefaultWebhookResponse)
    if as_json:
        print_json(reply)
        return
    out.print(f"default webhook {reply.webhook.id} deleted")
