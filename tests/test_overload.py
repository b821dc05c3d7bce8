"""Overload sheds, it does not queue: past its in-flight limit a node answers
RESOURCE_EXHAUSTED with a retry hint at once — never DEADLINE_EXCEEDED from waiting in a
queue — and the gateway's retries, honouring the hint, complete every call."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from gateway import GatewayServer
from protos import session_pb2 as pb
from protos import session_pb2_grpc
from registry import PUSHBACK_METADATA_KEY, RETRY_AFTER_METADATA_KEY
from simnet import SimNet
from testkit import RunningNode, eventually, running_node
from tests.calls import create, wait_state
from tests.probes import trailing_dict

IN_FLIGHT_LIMIT = 2
BURST = 120
SESSIONS = [("ws-1", f"s-{index}") for index in range(4)]


@pytest.fixture
async def tight_node(
    tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
) -> AsyncIterator[RunningNode]:
    """One node that may run only two calls, restores or handoffs at once."""
    async with running_node(
        tmp_path,
        etcd_url,
        cluster_name,
        simnet,
        extra_flags=("--max-in-flight", str(IN_FLIGHT_LIMIT)),
    ) as node:
        for ws, sid in SESSIONS:
            await create(node.stub, ws, sid)
        for ws, sid in SESSIONS:
            await wait_state(node.stub, ws, sid, pb.SESSION_STATE_READY)
        yield node


def _sends(prefix: str) -> list[pb.SendMessageRequest]:
    return [
        pb.SendMessageRequest(
            workspace_id=ws,
            session_id=sid,
            client_message_id=f"{prefix}-{index}",
            to="+14155550199",
            text="hi",
        )
        for index in range(BURST)
        for ws, sid in [SESSIONS[index % len(SESSIONS)]]
    ]


def _shed(node_id: str) -> float:
    return REGISTRY.get_sample_value("sessionmesh_node_calls_shed_total", {"node_id": node_id}) or 0


class TestShedding:
    """A burst far above the node's in-flight limit."""

    async def test_the_node_refuses_at_once_with_a_retry_hint(
        self, tight_node: RunningNode
    ) -> None:
        stub = tight_node.stub
        outcomes: Counter[str] = Counter()
        hints: list[dict[str, str]] = []

        async def send(request: pb.SendMessageRequest) -> None:
            try:
                await stub.SendMessage(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                outcomes[error.code().name] += 1
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    hints.append(trailing_dict(error))
                return
            outcomes["OK"] += 1

        shed_before = _shed(tight_node.server.node_id)
        await asyncio.gather(*(send(request) for request in _sends("direct")))
        assert set(outcomes) == {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        assert outcomes["OK"] >= IN_FLIGHT_LIMIT
        assert outcomes["RESOURCE_EXHAUSTED"] >= BURST // 2, outcomes
        assert all(int(hint[RETRY_AFTER_METADATA_KEY]) > 0 for hint in hints)
        assert all(int(hint[PUSHBACK_METADATA_KEY]) > 0 for hint in hints)
        assert _shed(tight_node.server.node_id) - shed_before == outcomes["RESOURCE_EXHAUSTED"]

    async def test_the_gateway_retries_until_every_call_is_done(
        self, tight_node: RunningNode, gateway: GatewayServer
    ) -> None:
        await eventually(
            lambda: tight_node.server.node_id in gateway.router.nodes, message="node routed"
        )
        shed_before = _shed(tight_node.server.node_id)
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            answers = await asyncio.gather(
                *(stub.SendMessage(request, timeout=30) for request in _sends("gateway"))
            )
        assert len(answers) == BURST
        assert not any(answer.duplicate for answer in answers)
        # The node did shed load; the callers never saw it.
        assert _shed(tight_node.server.node_id) > shed_before

    async def test_without_a_hint_resource_exhausted_is_an_answer_not_a_retry(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        # A node at MAX_SESSIONS_PER_INSTANCE: retrying the create would never help.
        async with running_node(
            tmp_path / "full", etcd_url, cluster_name, simnet, max_sessions=1
        ) as node:
            await create(node.stub, "ws-1", "s-1")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await create(node.stub, "ws-1", "s-2")
            error = raised.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert RETRY_AFTER_METADATA_KEY not in trailing_dict(error)
