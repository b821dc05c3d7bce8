"""The largest request a server accepts (``--max-message-bytes``, 64 KiB by default): past it
gRPC itself answers RESOURCE_EXHAUSTED, at the gateway and at a node, before anything parses
the request — and nothing is created or written."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import gateway
from node.storage import SessionStorage
from protos import session_pb2 as pb
from protos import session_pb2_grpc
from registry import DEFAULT_MAX_MESSAGE_BYTES
from simnet import SimNet
from testkit import running_node
from tests.calls import create, error_of, wait_state

SESSION = ("ws-size", "s-1")


def _send(text: str, message_id: str = "m-1") -> pb.SendMessageRequest:
    return pb.SendMessageRequest(
        workspace_id=SESSION[0],
        session_id=SESSION[1],
        client_message_id=message_id,
        to="+14155550101",
        text=text,
    )


class TestTheRequestSizeLimit:
    async def test_a_node_refuses_a_request_past_its_limit_and_writes_nothing(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet, extra_flags=["--max-message-bytes", "4096"]
        ) as running:
            await create(running.stub, *SESSION)
            await wait_state(running.stub, *SESSION, pb.SESSION_STATE_READY)
            # 4,000 characters are a valid text, but the request is over 4 KiB in UTF-8.
            error = await error_of(running.stub.SendMessage(_send("é" * 4000), timeout=5))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert await SessionStorage(running.storage).load_outbox(*SESSION) == []
            sent = await running.stub.SendMessage(_send("small", "m-2"), timeout=5)
            assert not sent.duplicate

    async def test_the_gateway_refuses_a_huge_request_before_routing_it(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        # The node would take it: only the gateway's own limit can refuse it.
        generous = ["--max-message-bytes", str(1 << 20)]
        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet, extra_flags=generous
        ) as running:
            config = gateway.load_config(
                [
                    "--listen", "127.0.0.1:0", "--etcd", etcd_url, "--cluster", cluster_name,
                    "--auth", "off",
                ],
                environ={},
            )  # fmt: skip
            assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
            server = await gateway.start_gateway(config)
            try:
                async with grpc.aio.insecure_channel(server.address) as channel:
                    stub = session_pb2_grpc.SessionServiceStub(channel)
                    huge = pb.CreateSessionRequest(
                        workspace_id=SESSION[0],
                        session_id=SESSION[1],
                        labels={"blob": "x" * (DEFAULT_MAX_MESSAGE_BYTES + 1)},
                    )
                    error = await error_of(stub.CreateSession(huge, timeout=5))
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    missing = await error_of(
                        running.stub.GetSession(
                            pb.GetSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1]),
                            timeout=5,
                        )
                    )
                    assert missing.code() == grpc.StatusCode.NOT_FOUND  # nothing was created
                    created = await stub.CreateSession(
                        pb.CreateSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1]),
                        timeout=10,
                    )
                    assert created.session_id == SESSION[1]
            finally:
                await server.stop(grace_seconds=0.5)

    def test_a_limit_too_small_for_a_valid_request_is_refused(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exited:
            gateway.load_config(["--max-message-bytes", "100"], environ={})
        assert exited.value.code == 2
        assert "--max-message-bytes" in capsys.readouterr().err
