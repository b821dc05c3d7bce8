"""The gateway routes by the owners map in etcd: a pin wins, then the slot's owner, and
placement only for a slot nobody owns; its AdminService reports and records operator intent."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import aetcd
import grpc
import pytest

from gateway import GatewayConfig, GatewayServer, start_gateway
from protos import session_pb2, session_pb2_grpc
from protos.sessionmesh.v1 import admin_pb2, admin_pb2_grpc
from registry import (
    ClusterKeys,
    Owner,
    OwnershipView,
    acquire_pinned,
    acquire_slot,
    connect_etcd,
    place_slot,
    release_slot,
    set_pin,
    slot_of,
    update_catalog,
)
from tests.test_gateway import RunningNode, start_echo_node
from tests.waiting import eventually

CALLS_WITHOUT_READS = 50


@pytest.fixture
async def etcd(etcd_url: str) -> AsyncIterator[aetcd.Client]:
    """A connected etcd client."""
    client = await connect_etcd(etcd_url)
    yield client
    await client.close()


@pytest.fixture
async def gateway(etcd_url: str, cluster_name: str) -> AsyncIterator[GatewayServer]:
    """A gateway on a free port for this test's cluster."""
    server = await start_gateway(
        GatewayConfig(listen_address="127.0.0.1:0", etcd_endpoints=etcd_url, cluster=cluster_name)
    )
    yield server
    await server.stop(grace_seconds=0.5)


@pytest.fixture
async def nodes(
    etcd: aetcd.Client, cluster_name: str, gateway: GatewayServer
) -> AsyncIterator[dict[str, RunningNode]]:
    """Two echo nodes (they answer with their id and own nothing by themselves)."""
    started = {
        node.node_id: node
        for node in [
            await start_echo_node(etcd, cluster_name, "n1"),
            await start_echo_node(etcd, cluster_name, "n2"),
        ]
    }
    await eventually(
        lambda: sorted(gateway.router.nodes) == ["n1", "n2"], message="the gateway sees both"
    )
    yield started
    for node in started.values():
        await node.stop()


@pytest.fixture
async def channel(gateway: GatewayServer) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to the gateway."""
    async with grpc.aio.insecure_channel(gateway.address) as client_channel:
        yield client_channel


def ownership_of(gateway: GatewayServer) -> OwnershipView:
    """The gateway's watch-fed ownership view."""
    view = gateway.router.ownership
    assert view is not None
    return view


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


async def served_by(channel: grpc.aio.Channel, workspace_id: str) -> str:
    """The node id that answered a GetSession for ``workspace_id`` through the gateway."""
    stub = session_pb2_grpc.SessionServiceStub(channel)
    session = await stub.GetSession(
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


class TestRoutingByOwners:
    """A call goes to the pin, else the slot's owner, else placement."""

    async def test_no_owner_routes_by_placement(
        self, gateway: GatewayServer, nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        workspace_id = workspace_placed_on(gateway, "n1")
        assert ownership_of(gateway).owner_of_slot(slot_of(workspace_id)) is None
        assert await served_by(channel, workspace_id) == "n1"

    async def test_owner_wins_over_the_ring(
        self,
        gateway: GatewayServer,
        nodes: dict[str, RunningNode],
        channel: grpc.aio.Channel,
        etcd: aetcd.Client,
        cluster_name: str,
    ) -> None:
        workspace_id = workspace_placed_on(gateway, "n1")
        slot = slot_of(workspace_id)
        won, _ = await acquire_slot(
            etcd,
            ClusterKeys(cluster_name),
            slot,
            node_id="n2",
            lease_id=nodes["n2"].registration.lease_id,
        )
        assert won
        await eventually(
            lambda: ownership_of(gateway).owner_of_slot(slot) is not None,
            message="the gateway sees the owner",
        )
        assert await served_by(channel, workspace_id) == "n2"
        assert nodes["n2"].servicer.calls == [workspace_id]
        assert nodes["n1"].servicer.calls == []

    async def test_pin_wins_over_the_owner_and_its_holder_over_the_pin(
        self,
        gateway: GatewayServer,
        nodes: dict[str, RunningNode],
        channel: grpc.aio.Channel,
        etcd: aetcd.Client,
        cluster_name: str,
    ) -> None:
        keys = ClusterKeys(cluster_name)
        workspace_id = workspace_placed_on(gateway, "n1")
        slot = slot_of(workspace_id)
        n2_lease = nodes["n2"].registration.lease_id
        assert (await acquire_slot(etcd, keys, slot, node_id="n2", lease_id=n2_lease))[0]
        await set_pin(etcd, keys, workspace_id, "n1")
        view = ownership_of(gateway)
        await eventually(
            lambda: view.pin_of(workspace_id) == "n1" and view.owner_of_slot(slot) is not None,
            message="the gateway sees pin and owner",
        )
        assert await served_by(channel, workspace_id) == "n1"
        # While the pinned workspace's key is held (mid-handoff here by n2), its holder serves.
        assert (await acquire_pinned(etcd, keys, workspace_id, node_id="n2", lease_id=n2_lease))[0]
        await eventually(
            lambda: view.pinned_owner_of(workspace_id) is not None,
            message="the gateway sees the pinned owner",
        )
        assert await served_by(channel, workspace_id) == "n2"

    async def test_deleted_owner_falls_back_without_reading_etcd_per_call(
        self,
        *,
        gateway: GatewayServer,
        nodes: dict[str, RunningNode],
        channel: grpc.aio.Channel,
        etcd: aetcd.Client,
        etcd_url: str,
        cluster_name: str,
    ) -> None:
        keys = ClusterKeys(cluster_name)
        workspace_id = workspace_placed_on(gateway, "n1")
        slot = slot_of(workspace_id)
        won, owner = await acquire_slot(
            etcd, keys, slot, node_id="n2", lease_id=nodes["n2"].registration.lease_id
        )
        assert won and isinstance(owner, Owner)
        view = ownership_of(gateway)
        await eventually(lambda: view.owner_of_slot(slot) is not None, message="owner seen")
        assert await served_by(channel, workspace_id) == "n2"
        assert await release_slot(etcd, keys, slot, owner)
        await eventually(lambda: view.owner_of_slot(slot) is None, message="deletion seen")
        reads_before = await etcd_range_count(etcd_url)
        answers = {await served_by(channel, workspace_id) for _ in range(CALLS_WITHOUT_READS)}
        reads_after = await etcd_range_count(etcd_url)
        assert answers == {"n1"}
        assert reads_after == reads_before, "routing read etcd during calls"


class TestAdminService:
    """The gateway's AdminService answers from its views and writes only intent."""

    async def test_plan_lists_an_owned_slot_that_placement_gives_elsewhere(
        self,
        gateway: GatewayServer,
        nodes: dict[str, RunningNode],
        channel: grpc.aio.Channel,
        etcd: aetcd.Client,
        cluster_name: str,
    ) -> None:
        keys = ClusterKeys(cluster_name)
        workspace_id = workspace_placed_on(gateway, "n1")
        slot = slot_of(workspace_id)
        await update_catalog(etcd, keys, workspace_id, session_count=3)
        lease_id = nodes["n2"].registration.lease_id
        assert (await acquire_slot(etcd, keys, slot, node_id="n2", lease_id=lease_id))[0]
        await eventually(lambda: ownership_of(gateway).owner_of_slot(slot) is not None)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        plan = await admin.PlanRebalance(admin_pb2.PlanRebalanceRequest(dry_run=True), timeout=10)
        assert plan.dry_run
        assert [(move.slot, move.from_node_id, move.to_node_id) for move in plan.moves] == [
            (slot, "n2", "n1")
        ]
        assert list(plan.moves[0].workspace_ids) == [workspace_id]
        assert plan.moves[0].session_count == 3
        assert (plan.slot_move_count, plan.workspace_count, plan.session_count) == (1, 1, 3)
        where = await admin.LocateWorkspace(
            admin_pb2.LocateWorkspaceRequest(workspace_id=workspace_id), timeout=10
        )
        assert (where.slot, where.owner_node_id, where.placement_node_id) == (slot, "n2", "n1")
        assert where.owner_epoch > 0
        assert where.routed_node_id == "n2"
        assert where.is_cataloged and where.session_count == 3
        nodes_reply = await admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=10)
        owned = {node.node_id: node.owned_slot_count for node in nodes_reply.nodes}
        assert owned == {"n1": 0, "n2": 1}

    async def test_migrate_to_a_node_that_is_not_alive_is_not_found(
        self, nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await admin.MigrateWorkspace(
                admin_pb2.MigrateWorkspaceRequest(workspace_id="ws-1", target_node_id="n9"),
                timeout=10,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "n9" in (raised.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await admin.LocateWorkspace(
                admin_pb2.LocateWorkspaceRequest(workspace_id="no/such"), timeout=10
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_health_reports_a_node_without_health_service_as_unreachable(
        self, nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        # The echo nodes serve no health service: the gateway must say so, not fail.
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        reply = await admin.CheckHealth(admin_pb2.CheckHealthRequest(), timeout=10)
        assert {node.node_id: node.is_reachable for node in reply.nodes} == {
            "n1": False,
            "n2": False,
        }
        assert all(node.status.startswith("UNIMPLEMENTED") for node in reply.nodes)

    async def test_drain_and_undrain_write_and_remove_the_request(
        self, gateway: GatewayServer, nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        view = ownership_of(gateway)
        reply = await admin.DrainNode(admin_pb2.DrainNodeRequest(node_id="n1"), timeout=10)
        assert (reply.node_id, reply.owned_slot_count) == ("n1", 0)
        await eventually(lambda: view.is_drain_requested("n1"), message="drain request seen")
        assert not view.is_drain_requested("n2")
        await admin.UndrainNode(admin_pb2.UndrainNodeRequest(node_id="n1"), timeout=10)
        await eventually(lambda: not view.is_drain_requested("n1"), message="request removed")
