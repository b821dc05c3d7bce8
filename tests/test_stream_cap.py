"""A cap on the calls one connection may have open at once (``--max-streams-per-connection``,
HTTP/2's concurrent streams): past it a caller's further calls wait for a free stream rather
than pile up, on the gateway and on a node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

import gateway
from protos import session_pb2 as pb
from protos import session_pb2_grpc
from registry import DEFAULT_GATEWAY_STREAMS_PER_CONNECTION, DEFAULT_NODE_STREAMS_PER_CONNECTION
from simnet import SimNet
from testkit import eventually, running_node
from tests.calls import create

SESSION = ("ws-streams", "s-1")
CAP = 2


async def _watch_until_snapshot(
    stub: session_pb2_grpc.SessionServiceStub, opened: list[grpc.aio.UnaryStreamCall[Any, Any]]
) -> None:
    call = stub.WatchSession(pb.WatchSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1]))
    opened.append(call)
    async for _ in call:
        return  # the snapshot: the stream is open and stays so


async def _assert_capped(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        opened: list[grpc.aio.UnaryStreamCall[Any, Any]] = []
        async with asyncio.timeout(10):
            for _ in range(CAP):
                await _watch_until_snapshot(stub, opened)
        # One call more waits for a stream: a short deadline runs out before it starts.
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await stub.GetSession(
                pb.GetSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1]), timeout=0.5
            )
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        opened[0].cancel()

        async def answered() -> bool:
            session = await stub.GetSession(
                pb.GetSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1]), timeout=2
            )
            return session.session_id == SESSION[1]

        await eventually(answered, message="a call once a stream is free")
        for call in opened:
            call.cancel()
    # Another connection has streams of its own.


def test_the_defaults_leave_room_for_a_gateways_forwarding() -> None:
    assert DEFAULT_NODE_STREAMS_PER_CONNECTION >= 10 * DEFAULT_GATEWAY_STREAMS_PER_CONNECTION


FLAGS = ["--max-streams-per-connection", str(CAP)]


async def test_a_node_caps_the_streams_of_one_connection(
    tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
) -> None:
    async with running_node(tmp_path, etcd_url, cluster_name, simnet, extra_flags=FLAGS) as node:
        await create(node.stub, *SESSION)
        await _assert_capped(node.server.address)


async def test_the_gateway_caps_the_streams_of_one_connection(
    tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
) -> None:
    # The node behind it keeps its default: only the gateway's own cap can hold calls back.
    async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
        await create(node.stub, *SESSION)
        config = gateway.load_config(
            [
                "--listen", "127.0.0.1:0", "--etcd", etcd_url, "--cluster", cluster_name,
                "--auth", "off", *FLAGS,
            ],
            environ={},
        )  # fmt: skip
        server = await gateway.start_gateway(config)
        try:
            await eventually(lambda: server.router.ring.ring.node_ids == ["node-1"])
            await _assert_capped(server.address)
        finally:
            await server.stop(grace_seconds=0.5)
