"""The gateway's AdminService (what ``meshctl`` calls): it answers from the gateway's
watch-fed views (nodes, owners, the plan placement calls for) and writes only operator intent
(drain requests, pins) to etcd."""

from __future__ import annotations

import aetcd
import grpc
import pytest

from gateway import GatewayServer
from protos.sessionmesh.v1 import admin_pb2, admin_pb2_grpc
from registry import ClusterKeys, acquire_slot, slot_of, update_catalog
from testkit import eventually
from tests.fakes import RunningEchoNode
from tests.probes import ownership_of, workspace_placed_on


class TestAdminService:
    """The gateway's AdminService answers from its views and writes only intent."""

    async def test_the_plan_lists_an_owned_slot_that_placement_gives_elsewhere(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
        etcd: aetcd.Client,
        keys: ClusterKeys,
    ) -> None:
        workspace_id = workspace_placed_on(gateway, "n1")
        slot = slot_of(workspace_id)
        await update_catalog(etcd, keys, workspace_id, session_count=3)
        lease_id = two_nodes["n2"].registration.lease_id
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

    async def test_migrating_to_a_node_that_is_not_alive_is_not_found(
        self, two_nodes: dict[str, RunningEchoNode], channel: grpc.aio.Channel
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

    async def test_health_reports_a_node_without_a_health_service_as_unreachable(
        self, two_nodes: dict[str, RunningEchoNode], channel: grpc.aio.Channel
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
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
    ) -> None:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        view = ownership_of(gateway)
        reply = await admin.DrainNode(admin_pb2.DrainNodeRequest(node_id="n1"), timeout=10)
        assert (reply.node_id, reply.owned_slot_count) == ("n1", 0)
        await eventually(lambda: view.is_drain_requested("n1"), message="drain request seen")
        assert not view.is_drain_requested("n2")
        await admin.UndrainNode(admin_pb2.UndrainNodeRequest(node_id="n1"), timeout=10)
        await eventually(lambda: not view.is_drain_requested("n1"), message="request removed")
