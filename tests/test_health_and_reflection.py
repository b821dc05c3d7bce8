"""Every server speaks ``grpc.health.v1`` and server reflection (grpcurl works out of the box);
the gateway's session service is SERVING only while some node is alive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aetcd
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import SESSION_SERVICE_NAME
from registry import ClusterKeys, cancel_drain, request_drain
from testkit import RunningNode, eventually
from tests.conftest import StartEchoNode

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _equals(status: Callable[[str], Awaitable[int]], expected: int) -> bool:
    return await status(SESSION_SERVICE_NAME) == expected


class TestTheGateway:
    """The gateway's health follows the mesh; reflection lists the session service."""

    async def test_health_follows_the_nodes(
        self, channel: grpc.aio.Channel, echo_node_factory: StartEchoNode
    ) -> None:
        stub = health_pb2_grpc.HealthStub(channel)

        async def status(service: str) -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return int((await stub.Check(request, timeout=5)).status)

        # No node yet: the gateway process is up, the session service is not.
        assert await status("") == SERVING
        assert await status(SESSION_SERVICE_NAME) == NOT_SERVING
        node = await echo_node_factory("n1")
        await eventually(
            lambda: _equals(status, SERVING),
            message="SERVING once a node is alive",
        )
        await node.stop()
        await eventually(
            lambda: _equals(status, NOT_SERVING), message="NOT_SERVING once no node is left"
        )
        assert await status("") == SERVING

    async def test_reflection_lists_the_service(self, channel: grpc.aio.Channel) -> None:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: list[str] = []
        async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names = [service.name for service in response.list_services_response.service]
        assert SESSION_SERVICE_NAME in names
        assert "grpc.health.v1.Health" in names


class TestANode:
    """A node says SERVING for the server and its service, and reflection lists both."""

    async def test_health_and_reflection(self, node: RunningNode) -> None:
        health = health_pb2_grpc.HealthStub(node.channel)
        for service in ("", SESSION_SERVICE_NAME):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(node.channel)
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
        names = {service.name for service in answer.list_services_response.service}
        assert {SESSION_SERVICE_NAME, "grpc.health.v1.Health"} <= names


class TestANodesReadiness:
    """A draining node is alive but not ready: its session service says NOT_SERVING from the
    drain's start (a readiness probe sends nothing more), SERVING again once withdrawn."""

    async def test_a_drain_turns_readiness_off_and_back_on(
        self, node: RunningNode, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        health = health_pb2_grpc.HealthStub(node.channel)

        async def status(service: str) -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return int((await health.Check(request, timeout=5)).status)

        assert await status(SESSION_SERVICE_NAME) == SERVING
        await request_drain(etcd, keys, "node-1")
        await eventually(lambda: _equals(status, NOT_SERVING), message="NOT_SERVING while draining")
        assert await status("") == SERVING  # alive: a liveness probe leaves it be
        await cancel_drain(etcd, keys, "node-1")
        await eventually(lambda: _equals(status, SERVING), message="SERVING once withdrawn")
