"""The gateway forwards every call to the node the routing table names, transparently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import aetcd
import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from gateway import GatewayConfig, GatewayServer, load_config, start_gateway
from protos import SESSION_SERVICE_NAME, session_pb2, session_pb2_grpc
from registry import (
    OWNER_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    Backoff,
    ClusterKeys,
    NodeRecord,
    NodeRegistration,
    RingTable,
    connect_etcd,
)
from registry.status import retry_after_ms
from routing import DEFAULT_RETRY_POLICY, RetryPolicy
from telemetry.tracing import server_interceptors
from tests.waiting import eventually

WATCH_EVENT_COUNT = 3
DEADLINE_ROUNDING_SECONDS = 0.01
"""How much later a forwarded deadline may end at the node than the caller's own."""
RICH_STATUS_KEY = "grpc-status-details-bin"
"""Where gRPC carries a google.rpc.Status with error details."""


class EchoNode(session_pb2_grpc.SessionServiceServicer):
    """A small real node: answers with its id, echoes ``x-`` metadata, fails on request."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.redirects: dict[str, str] = {}
        """workspace → ``owner`` metadata value CreateSession answers FAILED_PRECONDITION with."""
        self.unavailable_left: dict[str, int] = {}
        """workspace → how many DeleteSession calls still answer UNAVAILABLE."""
        self.calls: list[str] = []
        self.time_remaining_seconds: list[float | None] = []
        """What ``context.time_remaining()`` said at the start of each ListSessions call."""

    def _session(self, request: Any, context: Any) -> session_pb2.Session:
        labels = {
            key: value for key, value in context.invocation_metadata() or () if key.startswith("x-")
        }
        return session_pb2.Session(
            workspace_id=request.workspace_id,
            session_id=request.session_id,
            node_id=self.node_id,
            labels=labels,
        )

    async def GetSession(self, request: Any, context: Any) -> Any:
        self.calls.append(request.workspace_id)
        if request.session_id == "rich":
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason="SESSION_GONE", domain="test"))
            rich = status_pb2.Status(code=5, message="gone, with details", details=[detail])
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                rich.message,
                trailing_metadata=((RICH_STATUS_KEY, rich.SerializeToString()),),
            )
        if request.session_id == "missing":
            context.set_trailing_metadata((("x-reason", "gone"),))
            await context.abort(grpc.StatusCode.NOT_FOUND, f"session missing on {self.node_id}")
        context.set_trailing_metadata((("x-served-by", self.node_id),))
        return self._session(request, context)

    async def ListSessions(self, request: Any, context: Any) -> Any:
        self.time_remaining_seconds.append(context.time_remaining())
        await asyncio.sleep(30)  # slow on purpose: ended by the caller's deadline
        return session_pb2.ListSessionsResponse()

    async def CreateSession(self, request: Any, context: Any) -> Any:
        self.calls.append(request.workspace_id)
        owner = self.redirects.get(request.workspace_id)
        if owner:
            context.set_trailing_metadata(((OWNER_METADATA_KEY, owner),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the owner")
        return self._session(request, context)

    async def DeleteSession(self, request: Any, context: Any) -> Any:
        self.calls.append(request.workspace_id)
        left = self.unavailable_left.get(request.workspace_id, 0)
        if left:
            self.unavailable_left[request.workspace_id] = left - 1
            context.set_trailing_metadata(((RETRY_AFTER_METADATA_KEY, "10"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "handoff in progress")
        return self._session(request, context)

    async def WatchSession(self, request: Any, context: Any) -> Any:
        for index in range(WATCH_EVENT_COUNT):
            yield session_pb2.SessionEvent(
                workspace_id=request.workspace_id,
                session_id=f"{self.node_id}-{index}",
            )


@dataclass
class RunningNode:
    """A test node's server, servicer and etcd registration."""

    servicer: EchoNode
    server: grpc.aio.Server
    registration: NodeRegistration
    address: str

    @property
    def node_id(self) -> str:
        """The node's id."""
        return self.servicer.node_id

    async def stop(self) -> None:
        """Deregister, then stop serving."""
        await self.registration.stop()
        await self.server.stop(None)


async def start_echo_node(etcd: aetcd.Client, cluster: str, node_id: str) -> RunningNode:
    """Serve an :class:`EchoNode` on a free port and register it in ``cluster``."""
    server = grpc.aio.server(interceptors=server_interceptors())
    servicer = EchoNode(node_id)
    session_pb2_grpc.add_SessionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    registration = NodeRegistration(
        etcd, ClusterKeys(cluster), NodeRecord(node_id=node_id, address=address, capacity=100)
    )
    await registration.start()
    return RunningNode(servicer, server, registration, address)


@pytest.fixture
async def etcd(etcd_url: str) -> AsyncIterator[aetcd.Client]:
    """A connected etcd client."""
    client = await connect_etcd(etcd_url)
    yield client
    await client.close()


@pytest.fixture
async def node_factory(
    etcd: aetcd.Client, cluster_name: str
) -> AsyncIterator[Callable[[str], Awaitable[RunningNode]]]:
    """Start echo nodes in this test's cluster; all stopped afterwards."""
    nodes: list[RunningNode] = []

    async def start(node_id: str) -> RunningNode:
        node = await start_echo_node(etcd, cluster_name, node_id)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


@pytest.fixture
async def gateway(etcd_url: str, cluster_name: str) -> AsyncIterator[GatewayServer]:
    """A gateway on a free port for this test's cluster."""
    server = await start_gateway(
        GatewayConfig(listen_address="127.0.0.1:0", etcd_endpoints=etcd_url, cluster=cluster_name)
    )
    yield server
    await server.stop(grace_seconds=0.5)


@pytest.fixture
async def channel(gateway: GatewayServer) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to the gateway."""
    async with grpc.aio.insecure_channel(gateway.address) as client_channel:
        yield client_channel


@pytest.fixture
async def two_nodes(
    node_factory: Callable[[str], Awaitable[RunningNode]], gateway: GatewayServer
) -> dict[str, RunningNode]:
    """Two echo nodes, both seen by the gateway."""
    nodes = {node.node_id: node for node in [await node_factory("n1"), await node_factory("n2")]}
    await eventually(
        lambda: gateway.router.ring.ring.node_ids == ["n1", "n2"],
        message="the gateway sees both nodes",
    )
    return nodes


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


class TestRouting:
    """Each call lands on the node the routing table names."""

    async def test_twenty_workspaces_land_where_the_table_says(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        served_by: dict[str, str] = {}
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
            served_by[workspace_id] = session.node_id
        assert set(served_by.values()) == {"n1", "n2"}
        for node_id, node in two_nodes.items():
            mine = sorted(ws for ws, served in served_by.items() if served == node_id)
            assert sorted(node.servicer.calls) == mine

    async def test_deregistered_node_loses_its_workspaces(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
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

    async def test_no_node_is_unavailable_with_a_clear_message(
        self, gateway: GatewayServer, channel: grpc.aio.Channel, cluster_name: str
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(channel).GetSession(
                session_pb2.GetSessionRequest(workspace_id="ws-1", session_id="s1"), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == f"no node is alive in cluster {cluster_name}"


class TestPassThrough:
    """Metadata and deadlines go to the node; status, details and trailers come back."""

    async def test_metadata_reaches_the_node(
        self, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        session = await stub_of(channel).GetSession(
            session_pb2.GetSessionRequest(workspace_id="ws-meta", session_id="s1"),
            metadata=(("x-request-id", "r-42"), ("x-tenant", "acme")),
            timeout=5,
        )
        assert dict(session.labels) == {"x-request-id": "r-42", "x-tenant": "acme"}

    async def test_deadline_reaches_the_node(
        self, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
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

    async def test_status_details_and_trailers_come_back(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
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
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
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
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        call = stub_of(channel).GetSession(
            session_pb2.GetSessionRequest(workspace_id="ws-ok", session_id="s1"), timeout=5
        )
        await call
        trailing = dict(cast("Any", await call.trailing_metadata()))
        assert trailing["x-served-by"] == gateway.router.resolve("ws-ok").node_id

    async def test_watch_session_streams_through(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
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


class TestRecovery:
    """A wrong owner is corrected once; a handoff's UNAVAILABLE is retried."""

    async def test_failed_precondition_with_owner_is_rerouted_once(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        workspace_id = workspace_on(gateway.router.ring, "n1")
        n1, n2 = two_nodes["n1"], two_nodes["n2"]
        n1.servicer.redirects[workspace_id] = f"n2@{n2.address}"
        session = await stub_of(channel).CreateSession(
            session_pb2.CreateSessionRequest(workspace_id=workspace_id, session_id="s1"),
            timeout=5,
        )
        assert session.node_id == "n2"
        assert n1.servicer.calls == [workspace_id]
        assert n2.servicer.calls == [workspace_id]
        labels = {"gateway": gateway.address, "method": "CreateSession"}
        assert metric("sessionmesh_gateway_reroutes_total", **labels) == 1
        assert metric("sessionmesh_gateway_forwarded_calls_total", code="OK", **labels) == 1

    async def test_nodes_naming_each_other_end_at_the_deadline(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        workspace_id = workspace_on(gateway.router.ring, "n1")
        n1, n2 = two_nodes["n1"], two_nodes["n2"]
        n1.servicer.redirects[workspace_id] = f"n2@{n2.address}"
        n2.servicer.redirects[workspace_id] = f"n1@{n1.address}"
        started_at = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(channel).CreateSession(
                session_pb2.CreateSessionRequest(workspace_id=workspace_id, session_id="s1"),
                timeout=1,
            )
        # While a slot moves, views disagree for a moment: the gateway keeps following them
        # with a backoff, and ends with the nodes' own answer when the deadline comes — or,
        # on a loaded machine, the deadline passes while a last attempt is still in flight.
        assert raised.value.code() in {
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }
        assert time.monotonic() - started_at < 1.5
        calls = len(n1.servicer.calls) + len(n2.servicer.calls)
        assert 2 < calls < 40

    async def test_views_that_converge_are_followed(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        workspace_id = workspace_on(gateway.router.ring, "n1")
        n1, n2 = two_nodes["n1"], two_nodes["n2"]
        n1.servicer.redirects[workspace_id] = f"n2@{n2.address}"
        n2.servicer.redirects[workspace_id] = f"n1@{n1.address}"

        async def converge() -> None:
            await eventually(lambda: len(n2.servicer.calls) >= 2, message="two refusals by n2")
            del n2.servicer.redirects[workspace_id]  # n2's view catches up: it owns the slot

        converging = asyncio.create_task(converge())
        session = await stub_of(channel).CreateSession(
            session_pb2.CreateSessionRequest(workspace_id=workspace_id, session_id="s1"),
            timeout=5,
        )
        await converging
        assert session.node_id == "n2"

    async def test_unavailable_is_retried_within_the_deadline(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        node = two_nodes[gateway.router.resolve("ws-handoff").node_id]
        node.servicer.unavailable_left["ws-handoff"] = 2
        session = await stub_of(channel).DeleteSession(
            session_pb2.DeleteSessionRequest(workspace_id="ws-handoff", session_id="s1"),
            timeout=5,
        )
        assert session.node_id == node.node_id
        assert node.servicer.calls == ["ws-handoff"] * 3
        labels = {"gateway": gateway.address, "method": "DeleteSession"}
        assert metric("sessionmesh_gateway_retries_total", **labels) == 2

    async def test_dead_node_is_retried_until_the_deadline(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        workspace_id = workspace_on(gateway.router.ring, "n2")
        await two_nodes["n2"].server.stop(None)  # still registered: its lease lives on
        started_at = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(channel).GetSession(
                session_pb2.GetSessionRequest(workspace_id=workspace_id, session_id="s1"),
                timeout=2,
            )
        # A caller with a deadline sees latency, not an early error: the dead node's lease
        # may expire and its slots move before the deadline.
        assert raised.value.code() in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }
        assert 1.0 < time.monotonic() - started_at < 2.6
        labels = {"gateway": gateway.address, "method": "GetSession"}
        assert metric("sessionmesh_gateway_retries_total", **labels) >= (
            DEFAULT_RETRY_POLICY.max_attempts
        )

    async def test_without_a_deadline_retries_are_bounded(
        self, gateway: GatewayServer, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        workspace_id = workspace_on(gateway.router.ring, "n2")
        await two_nodes["n2"].server.stop(None)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(channel).GetSession(
                session_pb2.GetSessionRequest(workspace_id=workspace_id, session_id="s1")
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        labels = {"gateway": gateway.address, "method": "GetSession"}
        retries = DEFAULT_RETRY_POLICY.max_attempts - 1
        assert metric("sessionmesh_gateway_retries_total", **labels) == retries


class TestBadInput:
    """Requests the gateway cannot route are refused with INVALID_ARGUMENT."""

    @pytest.mark.parametrize(
        "payload",
        [
            b"\xff\xff\xff",
            b"\x0a\x05ab",
            session_pb2.GetSessionRequest(session_id="s1").SerializeToString(),
            session_pb2.GetSessionRequest(
                workspace_id="../etc", session_id="s1"
            ).SerializeToString(),
        ],
        ids=["garbage", "truncated", "missing-workspace", "bad-workspace"],
    )
    async def test_unroutable_request_is_invalid_argument(
        self, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel, payload: bytes
    ) -> None:
        raw_call = channel.unary_unary(
            f"/{SESSION_SERVICE_NAME}/GetSession",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await raw_call(payload, timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "workspace_id" in (raised.value.details() or "") or "request" in (
            raised.value.details() or ""
        )
        assert all(not node.servicer.calls for node in two_nodes.values())

    async def test_unroutable_stream_is_invalid_argument(
        self, two_nodes: dict[str, RunningNode], channel: grpc.aio.Channel
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub_of(channel).WatchSession(
                session_pb2.WatchSessionRequest(workspace_id="a b", session_id="s1"), timeout=5
            ):
                pass
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "workspace_id 'a b' is invalid" in (raised.value.details() or "")


async def _equals(status: Callable[[str], Awaitable[int]], expected: int) -> bool:
    return await status(SESSION_SERVICE_NAME) == expected


class TestOperations:
    """Health checking and reflection work on the gateway."""

    async def test_health_follows_the_nodes(
        self,
        channel: grpc.aio.Channel,
        node_factory: Callable[[str], Awaitable[RunningNode]],
    ) -> None:
        stub = health_pb2_grpc.HealthStub(channel)

        async def status(service: str) -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return int((await stub.Check(request, timeout=5)).status)

        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        # No node yet: the gateway process is up, the session service is not.
        assert await status("") == serving
        assert await status(SESSION_SERVICE_NAME) == not_serving
        node = await node_factory("n1")
        await eventually(
            lambda: _equals(status, serving),
            message="SERVING once a node is alive",
        )
        await node.stop()
        await eventually(
            lambda: _equals(status, not_serving), message="NOT_SERVING once no node is left"
        )
        assert await status("") == serving

    async def test_reflection_lists_the_service(self, channel: grpc.aio.Channel) -> None:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: list[str] = []
        async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names = [service.name for service in response.list_services_response.service]
        assert SESSION_SERVICE_NAME in names
        assert "grpc.health.v1.Health" in names


class TestConfig:
    """The configuration comes from flags over environment over defaults."""

    def test_defaults(self) -> None:
        assert load_config([], environ={}) == GatewayConfig()

    def test_environment_is_read_and_flags_win(self) -> None:
        environ = {
            "GATEWAY_LISTEN": "0.0.0.0:7100",
            "ETCD_ENDPOINTS": "http://10.0.0.1:2379",
            "SESSIONMESH_CLUSTER": "prod",
            "METRICS_LISTEN": "127.0.0.1:9100",
            "LOG_LEVEL": "debug",
        }
        config = load_config(["--cluster", "staging", "--listen", "127.0.0.1:0"], environ=environ)
        assert config == GatewayConfig(
            listen_address="127.0.0.1:0",
            etcd_endpoints="http://10.0.0.1:2379",
            cluster="staging",
            metrics_listen="127.0.0.1:9100",
            log_level="DEBUG",
        )

    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (["--listen", "nowhere"], "--listen"),
            (["--metrics-listen", "1.2.3.4:99999"], "--metrics-listen"),
            (["--etcd", "https://10.0.0.1:2379"], "only http://"),
            (["--cluster", "a/b"], "--cluster"),
            (["--log-level", "LOUD"], "--log-level"),
        ],
    )
    def test_bad_value_exits_2_naming_it(
        self, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as raised:
            load_config(argv, environ={})
        assert raised.value.code == 2
        assert named in capsys.readouterr().err


class TestRetryPolicy:
    """Retry delays grow with jitter, follow the server's hint and respect the deadline."""

    def test_backoff_grows_to_its_cap_within_the_jitter(self) -> None:
        backoff = Backoff(initial_seconds=0.02, max_seconds=0.1, multiplier=2.0, jitter=0.2)
        assert [
            backoff.delay_seconds(attempt, random_unit=0.5) for attempt in (1, 2, 3, 4)
        ] == pytest.approx([0.02, 0.04, 0.08, 0.1])
        assert backoff.delay_seconds(1, random_unit=0.0) == pytest.approx(0.016)
        assert backoff.delay_seconds(1, random_unit=0.999999) == pytest.approx(0.024, rel=1e-4)

    def test_server_hint_wins_over_the_backoff(self) -> None:
        trailers = ((RETRY_AFTER_METADATA_KEY, "250"),)
        hint_ms = retry_after_ms(trailers)
        assert hint_ms == 250
        delay = RetryPolicy().delay_seconds(
            attempt=1, code=grpc.StatusCode.UNAVAILABLE, hint_ms=hint_ms
        )
        assert delay == 0.25

    def test_no_retry_past_the_deadline_or_for_other_codes(self) -> None:
        policy = RetryPolicy()
        unavailable = grpc.StatusCode.UNAVAILABLE
        assert (
            policy.delay_seconds(
                attempt=1, code=unavailable, hint_ms=250, time_remaining_seconds=0.2
            )
            is None
        )
        assert policy.delay_seconds(attempt=1, code=grpc.StatusCode.NOT_FOUND) is None
        assert policy.delay_seconds(attempt=policy.max_attempts, code=unavailable) is None
        assert policy.delay_seconds(attempt=policy.max_attempts - 1, code=unavailable)
