"""``meshctl health`` and ``meshctl quarantine``: what is wrong with the nodes and the stored
sessions (commands of :mod:`client.meshctl`'s app)."""

from __future__ import annotations

import time

from rich.table import Table

from client._progress import CALL_TIMEOUT_SECONDS
from client.meshctl_app import (
    DEFAULT_GATEWAY,
    GatewayOption,
    JsonOption,
    app,
    out,
    percent,
    print_json,
    run_call,
)
from protos import admin_pb2


@app.command()
def health(gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False) -> None:
    """Check every node: reachable, sessions, utilisation."""
    reply: admin_pb2.CheckHealthResponse = run_call(
        gateway,
        lambda stub: stub.CheckHealth(admin_pb2.CheckHealthRequest(), timeout=CALL_TIMEOUT_SECONDS),
    )
    if as_json:
        print_json(reply)
        return
    table = Table(title="health")
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
    out.print(table)


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
