"""A new session shows a QR code, pairs and reaches READY, and watchers see each step; a
session that does not exist is NOT_FOUND for every call about it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from protos import session_pb2 as pb
from testkit import RunningNode, running_node, running_simnet
from tests.calls import PHONE, create, error_of, wait_state
from tests.probes import files_under


class TestFromQrCodeToReady:
    """STARTING → QR_PENDING → AUTHENTICATED → READY, with the QR code only while pending."""

    async def test_a_watch_sees_qr_pending_then_ready(self, node: RunningNode) -> None:
        await create(node.stub, "ws-1", "s-1")
        stream = node.stub.WatchSession(
            pb.WatchSessionRequest(workspace_id="ws-1", session_id="s-1")
        )
        states: list[int] = []
        first = True
        async with asyncio.timeout(10):
            async for event in stream:
                if first:
                    assert event.WhichOneof("event") == "snapshot"
                    states.append(event.snapshot.state)
                    first = False
                elif event.HasField("state_changed"):
                    states.append(event.state_changed.state)
                if states[-1] == pb.SESSION_STATE_READY:
                    break
        stream.cancel()
        assert pb.SESSION_STATE_QR_PENDING in states
        assert states.index(pb.SESSION_STATE_QR_PENDING) < states.index(
            pb.SESSION_STATE_AUTHENTICATED
        )
        assert states[-2:] == [pb.SESSION_STATE_AUTHENTICATED, pb.SESSION_STATE_READY]
        got = await node.stub.GetSession(
            pb.GetSessionRequest(workspace_id="ws-1", session_id="s-1")
        )
        assert got.node_id == "node-1" and got.qr_code == "" and got.phone_number == PHONE

    async def test_the_qr_code_is_served_while_pending(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with (
            running_simnet(pair_delay_ms=-1) as simnet,
            running_node(tmp_path, etcd_url, cluster_name, simnet) as node,
        ):
            await create(node.stub, "ws-1", "s-1")
            pending = await wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_QR_PENDING)
            qr = await node.stub.GetQrCode(
                pb.GetQrCodeRequest(workspace_id="ws-1", session_id="s-1")
            )
            assert qr.code and qr.code == pending.qr_code
            assert qr.expire_time.seconds > 0

    async def test_no_qr_code_once_ready(self, node: RunningNode) -> None:
        await create(node.stub, "ws-1", "s-1")
        await wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
        error = await error_of(
            node.stub.GetQrCode(pb.GetQrCodeRequest(workspace_id="ws-1", session_id="s-1"))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "no QR code" in (error.details() or "")


class TestUnknownSessions:
    """Every call about a session that was never created is NOT_FOUND and writes nothing."""

    async def test_an_unknown_session_is_not_found(self, node: RunningNode) -> None:
        key = {"workspace_id": "ws-1", "session_id": "nobody"}
        calls = [
            node.stub.GetSession(pb.GetSessionRequest(**key)),
            node.stub.GetQrCode(pb.GetQrCodeRequest(**key)),
            node.stub.SendMessage(
                pb.SendMessageRequest(**key, client_message_id="m-1", to="+1", text="hi")
            ),
            node.stub.WatchSession(
                pb.WatchSessionRequest(workspace_id="ws-1", session_id="nobody")
            ).read(),
        ]
        for call in calls:
            error = await error_of(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "ws-1/nobody" in (error.details() or "")
        assert files_under(node.storage) == []
