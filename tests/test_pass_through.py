"""The gateway is transparent: metadata and deadlines reach the node; status, details, rich
error details and trailers come back unchanged; streams flow through."""

from __future__ import annotations

import time
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway import GatewayServer
from gateway.forwarder import external_details, forwardable_metadata
from protos import session_pb2
from registry import OWNER_METADATA_KEY, ClusterKeys, NodeRecord, NodeRegistration
from testkit import eventually, free_port
from tests.fakes import RICH_STATUS_KEY, WATCH_EVENT_COUNT, RunningEchoNode
from tests.probes import stub_of, trailing_dict

DEADLINE_ROUNDING_SECONDS = 0.01
"""How much later a forwarded deadline may end at the node than the caller's own."""


class TestTowardsTheNode:
    """What the caller sends with a call reaches the node."""

    async def test_metadata_reaches_the_node(
        self, two_nodes: dict[str, RunningEchoNode], channel: grpc.aio.Channel
    ) -> None:
        session = await stub_of(channel).GetSession(
            session_pb2.GetSessionRequest(workspace_id="ws-meta", session_id="s1"),
            metadata=(("x-request-id", "r-42"), ("x-tenant", "acme")),
            timeout=5,
        )
        assert dict(session.labels) == {"x-request-id": "r-42", "x-tenant": "acme"}

    async def test_the_callers_deadline_reaches_the_node(
        self, two_nodes: dict[str, RunningEchoNode], channel: grpc.aio.Channel
    ) -> None:
        started_at = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(channel).ListSessions(
                session_pb2.ListSessionsRequest(workspace_id="ws-slow"), timeout=0.2
            )
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started_at < 1.0
        seen = [t for node in two_nodes.values() for t in node.servicer.time_remaining_seconds]
        assert len(seen) == 1
        assert seen[0] is not None
        # gRPC sends a deadline as a timeout in whole units (here milliseconds, rounded up),
        # measured again from each hop's own receipt: it may grow by a millisecond or so.
        assert 0 < seen[0] <= 0.2 + DEADLINE_ROUNDING_SECONDS


class TestBackToTheCaller:
    """What the node answers comes back to the caller as the node sent it."""

    async def test_status_details_and_trailers_of_an_error_come_back(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
    ) -> None:
        node = gateway.router.resolve("ws-missing")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(channel).GetSession(
                session_pb2.GetSessionRequest(workspace_id="ws-missing", session_id="missing"),
                timeout=5,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert raised.value.details() == f"session missing on {node.node_id}"
        assert trailing_dict(raised.value)["x-reason"] == "gone"

    async def test_rich_error_details_come_back(
        self, two_nodes: dict[str, RunningEchoNode], channel: grpc.aio.Channel
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(channel).GetSession(
                session_pb2.GetSessionRequest(workspace_id="ws-rich", session_id="rich"),
                timeout=5,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        packed = trailing_dict(raised.value)[RICH_STATUS_KEY]
        assert isinstance(packed, bytes)
        rich = status_pb2.Status.FromString(packed)
        info = error_details_pb2.ErrorInfo()
        assert rich.details[0].Unpack(info)
        assert info.reason == "SESSION_GONE"

    async def test_trailers_of_a_success_come_back(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
    ) -> None:
        call = stub_of(channel).GetSession(
            session_pb2.GetSessionRequest(workspace_id="ws-ok", session_id="s1"), timeout=5
        )
        await call
        trailing = dict(cast("Any", await call.trailing_metadata()))
        assert trailing["x-served-by"] == gateway.router.resolve("ws-ok").node_id

    async def test_a_watch_streams_every_event_of_the_owner_through(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
    ) -> None:
        node_id = gateway.router.resolve("ws-watch").node_id
        events = [
            event
            async for event in stub_of(channel).WatchSession(
                session_pb2.WatchSessionRequest(workspace_id="ws-watch", session_id="s1"),
                timeout=5,
            )
        ]
        assert [event.session_id for event in events] == [
            f"{node_id}-{index}" for index in range(WATCH_EVENT_COUNT)
        ]


class TestWhatStaysInside:
    """A node's address is the mesh's business: the owner trailer reaches an external caller
    as the node's id only (internal callers, straight to a node, still get the address)."""

    def test_the_owner_trailer_loses_its_address_at_the_gateway(self) -> None:
        forwarded = dict(
            forwardable_metadata(
                [(OWNER_METADATA_KEY, "node-2@10.0.0.7:7001"), ("x-reason", "moved")]
            )
        )
        assert forwarded == {OWNER_METADATA_KEY: "node-2", "x-reason": "moved"}

    def test_addresses_in_error_details_are_hidden(self) -> None:
        details = (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:7001: "
            "Failed to connect to remote host: Connection refused; [::1]:7002 and 10.1.2.3"
        )
        hidden = external_details(details, "node-9.internal:7003")
        assert "10.0.0.7" not in hidden and "::1" not in hidden and "10.1.2.3" not in hidden
        assert hidden.count("<node>") == 3
        assert external_details(
            "the channel to node-9.internal:7003 closed", "node-9.internal:7003"
        ) == ("the channel to <node> closed")

    async def test_an_unreachable_node_is_not_named_to_the_caller(
        self, gateway: GatewayServer, etcd: Any, cluster_name: str
    ) -> None:
        # A node registered at a port where nothing listens: the gateway cannot reach it.
        dead = f"127.0.0.1:{free_port()}"
        registration = NodeRegistration(
            etcd, ClusterKeys(cluster_name), NodeRecord(node_id="n-dead", address=dead, capacity=9)
        )
        await registration.start()
        try:
            await eventually(lambda: gateway.router.ring.ring.node_ids == ["n-dead"])
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub_of(channel).GetSession(
                        session_pb2.GetSessionRequest(workspace_id="ws-1", session_id="s-1"),
                        timeout=2,
                    )
            assert refused.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            details = refused.value.details() or ""
            assert dead not in details and "127.0.0.1" not in details, details
            assert "127.0.0.1" not in str(refused.value.trailing_metadata())
        finally:
            await registration.stop()
