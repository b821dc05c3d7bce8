"""``meshctl health`` and ``meshctl quarantine``: what is wrong with the nodes and the stored
sessions (commands of :mod:`client.meshctl`'s app).

``meshctl health --watch`` is the checklist's every-minute health check, live: it asks the
gateway again every ``--interval`` seconds and redraws the table in place (rich's ``Live``), or
with ``--json`` prints one JSON line per check, until Ctrl-C (exit 0). A check the gateway does
not answer is shown (``is_gateway_reachable`` false, its ``error``) and the watch goes on.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from client._progress import CALL_TIMEOUT_SECONDS
from client.meshctl_app import (
    DEFAULT_GATEWAY,
    TOKEN_VARIABLE,
    GatewayOption,
    JsonOption,
    app,
    as_dict,
    fail,
    gateway_channel,
    has_token,
    out,
    percent,
    print_json,
    run_call,
)
from protos import admin_pb2, admin_pb2_grpc

DEFAULT_WATCH_INTERVAL_SECONDS = 5.0
PASSING_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
"""Failures of one check that ``--watch`` shows and outlives (the next check may answer)."""
_admin_stub: Callable[[grpc.aio.Channel], admin_pb2_grpc.AdminServiceStub] = (
    admin_pb2_grpc.AdminServiceStub
)

WatchOption = Annotated[
    bool,
    typer.Option(
        "--watch", help="Check again every --interval seconds until Ctrl-C (one JSON line each)."
    ),
]
IntervalOption = Annotated[
    float, typer.Option("--interval", min=0.1, help="Seconds between two checks of --watch.")
]


@app.command()
def health(
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
    watch: WatchOption = False,
    interval: IntervalOption = DEFAULT_WATCH_INTERVAL_SECONDS,
) -> None:
    """Check every node: reachable, sessions, utilisation (--watch: again and again)."""
    if watch:
        watch_health(gateway, as_json=as_json, interval_seconds=interval)
        return
    reply: admin_pb2.CheckHealthResponse = run_call(
        gateway,
        lambda stub: stub.CheckHealth(admin_pb2.CheckHealthRequest(), timeout=CALL_TIMEOUT_SECONDS),
    )
    if as_json:
        print_json(reply)
        return
    out.print(health_table(reply))


@dataclass(frozen=True)
class HealthCheck:
    """One check of ``--watch``: the gateway's answer, or why there was none."""

    gateway: str
    checked_at: datetime
    reply: admin_pb2.CheckHealthResponse | None
    error: str = ""

    def as_json_line(self) -> str:
        """One line: ``health --json``'s document plus ``checked_at`` (UTC, ISO 8601),
        ``gateway``, ``is_gateway_reachable`` and ``error`` (empty when it answered)."""
        document: dict[str, Any] = {"nodes": []} if self.reply is None else as_dict(self.reply)
        document.update(
            checked_at=self.checked_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            gateway=self.gateway,
            is_gateway_reachable=self.reply is not None,
            error=self.error,
        )
        return json.dumps(document, sort_keys=True, separators=(",", ":"))


async def check_health(stub: admin_pb2_grpc.AdminServiceStub, gateway: str) -> HealthCheck:
    """Ask the gateway once. A call that may succeed next time (the gateway down, slow or
    busy) is a check with an error; any other failure (no token, a refusal) is raised: asking
    again would not change it."""
    checked_at = datetime.now(UTC)
    try:
        reply: admin_pb2.CheckHealthResponse = await stub.CheckHealth(
            admin_pb2.CheckHealthRequest(), timeout=CALL_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as error:
        if error.code() not in PASSING_FAILURES:
            raise
        return HealthCheck(gateway, checked_at, None, f"{error.code().name}: {error.details()}")
    return HealthCheck(gateway, checked_at, reply)


def watch_health(gateway: str, *, as_json: bool, interval_seconds: float) -> None:
    """Check every ``interval_seconds`` until Ctrl-C, which ends the command with exit 0."""
    try:
        if as_json:
            asyncio.run(_watch(gateway, interval_seconds, _print_json_line))
            return
        with Live(
            Text(f"asking {gateway}…"), console=out, auto_refresh=False, transient=False
        ) as live:
            answered: HealthCheck | None = None

            def show(check: HealthCheck) -> None:
                nonlocal answered
                live.update(_watch_view(check, answered, interval_seconds), refresh=True)
                if check.reply is not None:
                    answered = check

            try:
                asyncio.run(_watch(gateway, interval_seconds, show))
            finally:
                if not out.is_terminal:  # Live ends a terminal's last line, not a pipe's
                    out.line()
    except KeyboardInterrupt:
        return
    except grpc.aio.AioRpcError as error:
        hint = ""
        if error.code() == grpc.StatusCode.UNAUTHENTICATED and not has_token():
            hint = f" (give the admin token: --token or {TOKEN_VARIABLE})"
        fail(f"{error.code().name}: {error.details()}{hint}")


def _print_json_line(check: HealthCheck) -> None:
    sys.stdout.write(check.as_json_line() + "\n")
    sys.stdout.flush()


async def _watch(
    gateway: str, interval_seconds: float, show: Callable[[HealthCheck], None]
) -> None:
    """Check, show, wait for the next tick; forever (Ctrl-C cancels it). A fresh channel per
    check: a gateway that restarts is found again at the next tick, not after gRPC's
    reconnect backoff (up to two minutes)."""
    next_tick = time.monotonic()
    while True:
        async with gateway_channel(gateway) as channel:
            check = await check_health(_admin_stub(channel), gateway)
        show(check)
        now = time.monotonic()
        # A check slower than the interval: the next one starts at once, then keeps time.
        next_tick = max(next_tick + interval_seconds, now)
        await asyncio.sleep(next_tick - now)


def _watch_view(
    check: HealthCheck, answered: HealthCheck | None, interval_seconds: float
) -> RenderableType:
    """The live view: the newest answer's table, or the error and the table of the last check
    the gateway ``answered``."""
    at = check.checked_at.astimezone().strftime("%H:%M:%S")
    footer = Text(f"every {interval_seconds:g}s, Ctrl-C to stop", style="dim")
    if check.reply is not None:
        status = Text.assemble(
            (f"gateway {check.gateway}: ", ""), ("answering", "green"), f" at {at}"
        )
        return Group(status, health_table(check.reply), footer)
    status = Text.assemble(
        (f"gateway {check.gateway}: ", ""), ("not answering", "red"), f" at {at}: {check.error}"
    )
    if answered is None or answered.reply is None:
        return Group(status, footer)
    previous = answered.checked_at.astimezone().strftime("%H:%M:%S")
    return Group(status, health_table(answered.reply, title=f"health at {previous}"), footer)


def health_table(reply: admin_pb2.CheckHealthResponse, *, title: str = "health") -> Table:
    """The nodes of a CheckHealth answer, one row each."""
    table = Table(title=title)
    for column in ("node", "address", "reachable", "status", "sessions", "capacity", "utilisation"):
        table.add_column(column)
    for node in reply.nodes:
        table.add_row(
            node.node_id,
            node.address,
            "[green]yes[/green]" if node.is_reachable else "[red]no[/red]",
            node.status,
            str(node.sessions),
            str(node.capacity),
            percent(node.utilisation),
        )
    return table


@app.command()
def quarantine(gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False) -> None:
    """List the sessions the nodes could not restore from their stored files."""
    reply: admin_pb2.ListQuarantinedResponse = run_call(
        gateway,
        lambda stub: stub.ListQuarantined(
            admin_pb2.ListQuarantinedRequest(), timeout=CALL_TIMEOUT_SECONDS
        ),
    )
    if as_json:
        print_json(reply)
        return
    if not reply.sessions:
        out.print("no session is quarantined")
        return
    table = Table(title="quarantined sessions")
    for column in ("workspace", "session", "node", "since", "reason"):
        table.add_column(column)
    for record in reply.sessions:
        table.add_row(
            record.workspace_id,
            record.session_id or "(whole workspace)",
            record.node_id,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.since_unix)),
            record.reason,
        )
    out.print(table)
    out.print("repair the files, then let the slot move again (drain/undrain or a restart)")
