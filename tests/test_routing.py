"""The gateway sends each call to the node that owns its workspace: a pin wins, then the
slot's owner in etcd, then placement on the ring; routing never reads etcd per call."""

from __future__ import annotations

import aetcd
import grpc
import pytest

from gateway import GatewayServer
from protos import session_pb2
from registry import (
    ClusterKeys,
    Owner,
    acquire_pinned,
    acquire_slot,
    release_slot,
    set_pin,
    slot_of,
)
from testkit import eventually
from tests.fakes import RunningEchoNode
from tests.probes import (
    etcd_range_count,
    ownership_of,
    served_by,
    stub_of,
    workspace_on,
    workspace_placed_on,
)

CALLS_WITHOUT_READS = 50


class TestRoutingByTheRing:
    """Each call lands on the node the routing table names; a node that leaves loses its share."""

    async def test_twenty_workspaces_land_where_the_table_says(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
    ) -> None:
        served: dict[str, str] = {}
        for index in range(20):
            workspace_id = f"workspace-{index}"
            session = await stub_of(channel).GetSession(
                session_pb2.GetSessionRequest(workspace_id=workspace_id, session_id="s1"),
                timeout=5,
            )
            expected = gateway.router.ring.route(workspace_id)
            assert expected is not None
            assert session.node_id == expected.node_id
            assert session.workspace_id == workspace_id
            served[workspace_id] = session.node_id
        assert set(served.values()) == {"n1", "n2"}
        for node_id, node in two_nodes.items():
            mine = sorted(ws for ws, answered in served.items() if answered == node_id)
            assert sorted(node.servicer.calls) == mine

    async def test_a_deregistered_node_loses_its_workspaces_and_its_channel(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
    ) -> None:
        workspace_id = workspace_on(gateway.router.ring, "n2")
        await two_nodes["n2"].registration.stop()
        await eventually(
            lambda: gateway.router.ring.ring.node_ids == ["n1"],
            message="the gateway drops n2",
        )
        session = await stub_of(channel).GetSession(
            session_pb2.GetSessionRequest(workspace_id=workspace_id, session_id="s1"), timeout=5
        )
        assert session.node_id == "n1"
        assert "n2:" not in " ".join(gateway.router.channels._channels)  # its channel is closed

    async def test_with_no_node_alive_a_call_is_unavailable_naming_the_cluster(
        self, gateway: GatewayServer, channel: grpc.aio.Channel, cluster_name: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(channel).GetSession(
                session_pb2.GetSessionRequest(workspace_id="ws-1", session_id="s1"), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == f"no node is alive in cluster {cluster_name}"


class TestRoutingByOwners:
    """A call goes to the pin, else the slot's owner, else placement."""

    async def test_a_slot_without_owner_routes_by_placement(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
    ) -> None:
        workspace_id = workspace_placed_on(gateway, "n1")
        assert ownership_of(gateway).owner_of_slot(slot_of(workspace_id)) is None
        assert await served_by(channel, workspace_id) == "n1"

    async def test_the_owner_wins_over_the_ring(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
        etcd: aetcd.Client,
        keys: ClusterKeys,
    ) -> None:
        workspace_id = workspace_placed_on(gateway, "n1")
        slot = slot_of(workspace_id)
        won, _ = await acquire_slot(
            etcd, keys, slot, node_id="n2", lease_id=two_nodes["n2"].registration.lease_id
        )
        assert won
        await eventually(
            lambda: ownership_of(gateway).owner_of_slot(slot) is not None,
            message="the gateway sees the owner",
        )
        assert await served_by(channel, workspace_id) == "n2"
        assert two_nodes["n2"].servicer.calls == [workspace_id]
        assert two_nodes["n1"].servicer.calls == []

    async def test_a_pin_wins_over_the_owner_and_its_holder_over_the_pin(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
        etcd: aetcd.Client,
        keys: ClusterKeys,
    ) -> None:
        workspace_id = workspace_placed_on(gateway, "n1")
        slot = slot_of(workspace_id)
        n2_lease = two_nodes["n2"].registration.lease_id
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

    async def test_a_deleted_owner_falls_back_without_reading_etcd_per_call(
        self,
        *,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
        etcd: aetcd.Client,
        etcd_url: str,
        keys: ClusterKeys,
    ) -> None:
        workspace_id = workspace_placed_on(gateway, "n1")
        slot = slot_of(workspace_id)
        won, owner = await acquire_slot(
            etcd, keys, slot, node_id="n2", lease_id=two_nodes["n2"].registration.lease_id
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
