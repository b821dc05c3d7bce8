"""A node asked about another node's workspace names the owner; the gateway follows it, retries
a handoff's UNAVAILABLE within the caller's deadline, and its retry policy is data: backoff
with jitter, the server's hint honoured, never past the deadline."""

from __future__ import annotations

import asyncio
import time

import aetcd
import grpc
import pytest

from gateway import GatewayServer
from protos import session_pb2
from registry import (
    OWNER_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    Backoff,
    ClusterKeys,
    NodeRecord,
    NodeRegistration,
)
from registry.status import retry_after_ms
from routing import DEFAULT_RETRY_POLICY, RetryPolicy
from testkit import RunningNode, eventually
from tests.calls import create, error_of
from tests.fakes import RunningEchoNode
from tests.probes import files_under, metric, stub_of, trailing_dict, workspace_on


class TestTheWrongNodeNamesTheOwner:
    """A real node refuses a workspace another node owns, naming that node, and writes nothing."""

    async def test_a_workspace_of_another_node_is_failed_precondition_with_its_owner(
        self, node: RunningNode, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        other = NodeRegistration(
            etcd,
            keys,
            NodeRecord(node_id="node-2", address="127.0.0.1:1", capacity=500),
            lease_ttl_seconds=2,
        )
        await other.start()
        try:
            routing = node.server.ring
            await eventually(lambda: {"node-1", "node-2"} <= set(routing.ring.node_ids))

            def owner(workspace_id: str) -> str:
                record = routing.route(workspace_id)
                return record.node_id if record else ""

            theirs = next(f"ws-{i}" for i in range(1000) if owner(f"ws-{i}") == "node-2")
            mine = next(f"ws-{i}" for i in range(1000) if owner(f"ws-{i}") == "node-1")
            error = await error_of(create(node.stub, theirs, "s-1"))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert trailing_dict(error)[OWNER_METADATA_KEY] == "node-2@127.0.0.1:1"
            assert files_under(node.storage) == []
            await create(node.stub, mine, "s-1")  # its own workspaces it still serves
        finally:
            await other.stop()


class TestTheGatewayFollowsRedirects:
    """A wrong owner is corrected once; views that disagree are followed until the deadline."""

    async def test_failed_precondition_with_owner_is_rerouted_once(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
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
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
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
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
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


class TestTheGatewayRetries:
    """UNAVAILABLE is retried within the caller's deadline, a bounded number of times without."""

    async def test_unavailable_is_retried_within_the_deadline(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
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

    async def test_a_dead_node_is_retried_until_the_deadline(
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
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
        self,
        gateway: GatewayServer,
        two_nodes: dict[str, RunningEchoNode],
        channel: grpc.aio.Channel,
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


class TestRetryPolicy:
    """Retry delays grow with jitter, follow the server's hint and respect the deadline."""

    def test_backoff_grows_to_its_cap_within_the_jitter(self) -> None:
        backoff = Backoff(initial_seconds=0.02, max_seconds=0.1, multiplier=2.0, jitter=0.2)
        assert [
            backoff.delay_seconds(attempt, random_unit=0.5) for attempt in (1, 2, 3, 4)
        ] == pytest.approx([0.02, 0.04, 0.08, 0.1])
        assert backoff.delay_seconds(1, random_unit=0.0) == pytest.approx(0.016)
        assert backoff.delay_seconds(1, random_unit=0.999999) == pytest.approx(0.024, rel=1e-4)

    def test_the_servers_hint_wins_over_the_backoff(self) -> None:
        trailers = ((RETRY_AFTER_METADATA_KEY, "250"),)
        hint_ms = retry_after_ms(trailers)
        assert hint_ms == 250
        policy = RetryPolicy()
        delays = [
            policy.delay_seconds(attempt=1, code=grpc.StatusCode.UNAVAILABLE, hint_ms=hint_ms)
            for _ in range(200)
        ]
        # The hint, jittered like the backoff, so that callers refused together scatter.
        assert all(delay is not None and 0.2 <= delay <= 0.3 for delay in delays), delays
        assert len(set(delays)) > 100

    def test_resource_exhausted_retries_only_with_a_hint(self) -> None:
        policy = RetryPolicy()
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        # A node that sheds load says when to come back; a node at MAX_SESSIONS does not.
        assert policy.delay_seconds(attempt=1, code=exhausted, hint_ms=50) is not None
        assert policy.delay_seconds(attempt=1, code=exhausted) is None
        pushback = (("grpc-retry-pushback-ms", "80"),)
        assert retry_after_ms(pushback) == 80
        both = ((RETRY_AFTER_METADATA_KEY, "30"), ("grpc-retry-pushback-ms", "80"))
        assert retry_after_ms(both) == 30

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
