"""Looking into running servers from a test: stubs, trailers, metric samples, which workspace
lands where, how many reads etcd has served, and what a node wrote to its storage."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any, cast

import grpc
from prometheus_client import REGISTRY

from gateway import GatewayServer
from node import message_log
from protos import session_pb2, session_pb2_grpc
from registry import OwnershipView, RingTable, place_slot, slot_of


def stub_of(channel: grpc.aio.Channel) -> session_pb2_grpc.SessionServiceStub:
    """A SessionService stub on ``channel``."""
    return session_pb2_grpc.SessionServiceStub(channel)


def trailing_dict(call_or_error: grpc.aio.AioRpcError) -> dict[str, str]:
    """Trailing metadata of a failed call as a dict."""
    return dict(cast("Any", call_or_error.trailing_metadata() or ()))


def metric(name: str, **labels: str) -> float:
    """The current value of a gateway metric sample (0 when never touched)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def workspace_on(routing: RingTable, node_id: str) -> str:
    """A workspace the routing table gives ``node_id``."""
    for index in range(1000):
        workspace_id = f"ws-{index}"
        node = routing.route(workspace_id)
        if node is not None and node.node_id == node_id:
            return workspace_id
    raise AssertionError(f"no workspace routes to {node_id}")


def workspace_placed_on(gateway: GatewayServer, node_id: str) -> str:
    """A workspace whose slot placement (and the ring) gives ``node_id``."""
    routing = gateway.router.ring
    for index in range(1000):
        workspace_id = f"ws-{index}"
        slot = slot_of(workspace_id, routing.slot_count)
        ring_node = routing.node_for_slot(slot)
        placed = place_slot(routing, gateway.router.nodes, slot)
        if ring_node is not None and ring_node.node_id == node_id and placed == node_id:
            return workspace_id
    raise AssertionError(f"no workspace is placed on {node_id}")


def ownership_of(gateway: GatewayServer) -> OwnershipView:
    """The gateway's watch-fed ownership view."""
    view = gateway.router.ownership
    assert view is not None
    return view


async def served_by(channel: grpc.aio.Channel, workspace_id: str) -> str:
    """The node id that answered a GetSession for ``workspace_id`` through the gateway."""
    session = await stub_of(channel).GetSession(
        session_pb2.GetSessionRequest(workspace_id=workspace_id, session_id="s1"), timeout=5
    )
    return str(session.node_id)


async def etcd_range_count(etcd_url: str) -> int:
    """How many Range (read) calls the etcd server has started so far, from its metrics."""

    def read() -> str:
        with urllib.request.urlopen(f"{etcd_url}/metrics", timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(read)
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("grpc_server_started_total{")
        and 'grpc_method="Range"' in line
        and 'grpc_service="etcdserverpb.KV"' in line
    )


def files_under(path: Path) -> list[Path]:
    """Every file below ``path`` (none when it does not exist), sorted."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def stored_message(storage: Path, workspace_id: str, session_id: str, message_id: str) -> Any:
    """The message as the session's folder holds it now (its log replayed), or None."""
    log = storage / f"workspace_{workspace_id}" / session_id / message_log.LOG_NAME
    try:
        return message_log.replay(log.read_bytes()).get(message_id)
    except FileNotFoundError:
        return None
