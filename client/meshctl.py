"""``meshctl``: the operator's CLI for a sessionmesh cluster, a thin client of the gateway's
``AdminService``.

Every command takes ``--gateway HOST:PORT`` (env ``MESHCTL_GATEWAY``, default
``127.0.0.1:7000``) and ``--json`` (one JSON document on stdout instead of rich tables).
Exit codes: 0 done, 1 the call failed (message on stderr), 2 bad usage.

Examples::

    meshctl nodes
    meshctl where ws-42 --json
    meshctl drain node-2 --wait --timeout-seconds 300
    meshctl migrate ws-42 --to node-3 --wait
    meshctl rebalance --dry-run
    meshctl quarantine --json
    meshctl prometheus-targets --gateway gateway-1:9100 --out /etc/prometheus/sessionmesh.json
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from client import (  # noqa: F401 - register their commands
    meshctl_backup,
    meshctl_health,
    meshctl_targets,
    meshctl_tokens,
    meshctl_webhooks,
)
from client._progress import CALL_TIMEOUT_SECONDS, locate, wait_for_drain, wait_for_owner
from client.meshctl_app import (
    DEFAULT_GATEWAY,
    GatewayOption,
    JsonOption,
    WaitTimeoutOption,
    app,
    out,
    percent,
    print_json,
    run_call,
    session_count_text,
)
from protos import admin_pb2, admin_pb2_grpc


@app.command()
def nodes(gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False) -> None:
    """List the live nodes: state, load, owned slots."""
    reply: admin_pb2.ListNodesResponse = run_call(
        gateway,
        lambda stub: stub.ListNodes(admin_pb2.ListNodesRequest(), timeout=CALL_TIMEOUT_SECONDS),
    )
    if as_json:
        print_json(reply)
        return
    table = Table(title=f"nodes ({reply.slot_count} slots)")
    for column in ("node", "address", "state", "drain asked", "zone", "load", "capacity"):
        table.add_column(column, justify="right" if column in ("load", "capacity") else "left")
    table.add_column("owned slots", justify="right")
    table.add_column("share", justify="right")
    for node in reply.nodes:
        table.add_row(
            node.node_id,
            node.address,
            node.state,
            "yes" if node.is_drain_requested else "-",
            node.zone or "-",
            str(node.load),
            str(node.capacity),
            str(node.owned_slot_count),
            percent(node.owned_slot_share),
        )
    out.print(table)


@app.command()
def ring(gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False) -> None:
    """Show each node's share of slots, by the ring and by the owners map."""
    reply: admin_pb2.DescribeRingResponse = run_call(
        gateway,
        lambda stub: stub.DescribeRing(
            admin_pb2.DescribeRingRequest(), timeout=CALL_TIMEOUT_SECONDS
        ),
    )
    if as_json:
        print_json(reply)
        return
    table = Table(
        title=f"ring v{reply.ring_version} ({reply.slot_count} slots)",
        caption=f"{reply.orphan_slot_count} slots without an owner",
    )
    for column in ("node", "weight", "ring slots", "ring share", "owned slots", "owned share"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for member in reply.members:
        table.add_row(
            member.node_id,
            str(member.weight),
            str(member.ring_slot_count),
            percent(member.ring_slot_share),
            str(member.owned_slot_count),
            percent(member.owned_slot_share),
        )
    out.print(table)


@app.command()
def where(
    workspace: str, gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False
) -> None:
    """Tell where a workspace lives: slot, owner and epoch, ring choice, pin, sessions."""
    reply: admin_pb2.LocateWorkspaceResponse = run_call(
        gateway, lambda stub: locate(stub, workspace)
    )
    if as_json:
        print_json(reply)
        return
    table = Table(title=f"workspace {reply.workspace_id}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    owner = f"{reply.owner_node_id} (epoch {reply.owner_epoch})" if reply.owner_node_id else "-"
    pin = reply.pinned_node_id or "-"
    if reply.pinned_owner_node_id:
        pin += f" (held by {reply.pinned_owner_node_id}, epoch {reply.pinned_owner_epoch})"
    rows = [
        ("slot", str(reply.slot)),
        ("owner", owner),
        ("ring choice", reply.ring_node_id or "-"),
        ("placement choice", reply.placement_node_id or "-"),
        ("pin", pin),
        (
            "routed to",
            f"{reply.routed_node_id} ({reply.routed_address})" if reply.routed_node_id else "-",
        ),
        ("sessions", session_count_text(reply.session_count)),
        ("in catalog", "yes" if reply.is_cataloged else "no"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


@app.command()
def drain(
    node: str,
    *,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until it owns no slot.")
    ] = False,
    timeout_seconds: WaitTimeoutOption = 300.0,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Ask a node to drain: its reconciler hands off every slot it owns."""

    async def call(stub: admin_pb2_grpc.AdminServiceStub) -> admin_pb2.DrainNodeResponse:
        reply: admin_pb2.DrainNodeResponse = await stub.DrainNode(
            admin_pb2.DrainNodeRequest(node_id=node), timeout=CALL_TIMEOUT_SECONDS
        )
        if wait:
            await wait_for_drain(
                stub, node, start_count=reply.owned_slot_count, timeout_seconds=timeout_seconds
            )
        return reply

    reply = run_call(gateway, call)
    if as_json:
        print_json(reply)
        return
    done = "drained" if wait else "drain requested for"
    out.print(f"{done} node {reply.node_id} (owned {reply.owned_slot_count} slots)")


@app.command()
def undrain(
    node: str, gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False
) -> None:
    """Withdraw a node's drain request."""
    reply: admin_pb2.UndrainNodeResponse = run_call(
        gateway,
        lambda stub: stub.UndrainNode(
            admin_pb2.UndrainNodeRequest(node_id=node), timeout=CALL_TIMEOUT_SECONDS
        ),
    )
    if as_json:
        print_json(reply)
        return
    out.print(f"drain request of node {reply.node_id} withdrawn")


@app.command()
def migrate(
    workspace: str,
    *,
    to: Annotated[str, typer.Option("--to", help="The node to move the workspace to.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the new owner.")] = False,
    timeout_seconds: WaitTimeoutOption = 120.0,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Pin a workspace to a node; its current owner hands it over."""

    async def call(stub: admin_pb2_grpc.AdminServiceStub) -> admin_pb2.MigrateWorkspaceResponse:
        request = admin_pb2.MigrateWorkspaceRequest(workspace_id=workspace, target_node_id=to)
        reply: admin_pb2.MigrateWorkspaceResponse = await stub.MigrateWorkspace(
            request, timeout=CALL_TIMEOUT_SECONDS
        )
        if wait:
            await wait_for_owner(stub, workspace, node_id=to, timeout_seconds=timeout_seconds)
        return reply

    reply = run_call(gateway, call)
    if as_json:
        print_json(reply)
        return
    done = "moved" if wait else "pinned"
    previous = f" (was on {reply.previous_node_id})" if reply.previous_node_id else ""
    out.print(f"{done} {reply.workspace_id} to {reply.target_node_id}{previous}")


@app.command()
def unpin(
    workspace: str, gateway: GatewayOption = DEFAULT_GATEWAY, as_json: JsonOption = False
) -> None:
    """Remove a workspace's pin: it goes back to its slot's owner."""
    reply: admin_pb2.UnpinWorkspaceResponse = run_call(
        gateway,
        lambda stub: stub.UnpinWorkspace(
            admin_pb2.UnpinWorkspaceRequest(workspace_id=workspace), timeout=CALL_TIMEOUT_SECONDS
        ),
    )
    if as_json:
        print_json(reply)
        return
    if reply.previous_pinned_node_id:
        out.print(f"unpinned {reply.workspace_id} from {reply.previous_pinned_node_id}")
    else:
        out.print(f"{reply.workspace_id} had no pin")


@app.command()
def rebalance(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the plan.")] = False,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    as_json: JsonOption = False,
) -> None:
    """Show the slot moves placement calls for (the reconcilers make them by themselves)."""
    reply: admin_pb2.PlanRebalanceResponse = run_call(
        gateway,
        lambda stub: stub.PlanRebalance(
            admin_pb2.PlanRebalanceRequest(dry_run=dry_run), timeout=CALL_TIMEOUT_SECONDS
        ),
    )
    if as_json:
        print_json(reply)
        return
    table = Table(title="rebalance plan" + (" (dry run)" if dry_run else ""))
    for column in ("slot", "from", "to", "workspaces", "sessions"):
        table.add_column(column, justify="right" if column in ("slot", "sessions") else "left")
    for move in reply.moves:
        table.add_row(
            str(move.slot),
            move.from_node_id,
            move.to_node_id,
            ", ".join(move.workspace_ids) or "-",
            session_count_text(move.session_count),
        )
    table.add_section()
    table.add_row(
        f"{reply.slot_move_count} slots",
        "",
        "",
        f"{reply.workspace_count} workspaces",
        str(reply.session_count),
    )
    out.print(table)
    if not reply.moves:
        out.print("no moves: every owned slot is where placement puts it")
    if not dry_run:
        out.print("the node reconcilers carry these moves out by themselves; nothing was pushed")


def main() -> None:
    """Entry point of the ``meshctl`` console script."""
    app()


if __name__ == "__main__":
    main()
