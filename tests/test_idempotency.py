"""Retries are safe: CreateSession is idempotent on session_id, SendMessage on
client_message_id (an acknowledged send is on disk and delivered once), DeleteSession always."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc

from protos import session_pb2 as pb
from simnet import SimNet
from testkit import RunningNode, eventually
from tests.calls import create, error_of, wait_state
from tests.probes import files_under, stored_message


class TestCreateSession:
    """The same session id answers the same session; another phone number is refused."""

    async def test_a_second_create_answers_the_first_and_another_phone_is_already_exists(
        self, node: RunningNode
    ) -> None:
        first = await create(node.stub, "ws-1", "s-1")
        again = await create(node.stub, "ws-1", "s-1")
        assert again.create_time == first.create_time
        error = await error_of(
            node.stub.CreateSession(
                pb.CreateSessionRequest(
                    workspace_id="ws-1", session_id="s-1", phone_number="+14155550111"
                )
            )
        )
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "another phone number" in (error.details() or "")

    async def test_concurrent_creates_make_one_session(self, node: RunningNode) -> None:
        created = await asyncio.gather(*(create(node.stub, "ws-1", "s-1") for _ in range(10)))
        assert len({session.create_time.ToNanoseconds() for session in created}) == 1
        assert node.server.manager.hosted_count == 1


class TestSendMessage:
    """An acknowledged send is on disk; replays answer ``duplicate`` and deliver nothing twice."""

    async def test_duplicate_sends_deliver_once(self, node: RunningNode, simnet: SimNet) -> None:
        await create(node.stub, "ws-1", "s-1")
        await wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
        request = pb.SendMessageRequest(
            workspace_id="ws-1", session_id="s-1", client_message_id="m-1", to="+1999", text="hi"
        )
        first = await node.stub.SendMessage(request)
        assert not first.duplicate and first.status == pb.MESSAGE_STATUS_QUEUED
        assert first.node_id == "node-1"

        def stored() -> Any:
            return stored_message(node.storage, "ws-1", "s-1", "m-1")

        assert stored().text == "hi"  # acknowledged means on disk
        replays = await asyncio.gather(*(node.stub.SendMessage(request) for _ in range(5)))
        assert all(r.duplicate and r.accept_time == first.accept_time for r in replays)

        await eventually(lambda: simnet.delivered_ids("ws-1/s-1")["m-1"] == 1)
        await eventually(lambda: stored().status != "QUEUED")
        assert simnet.delivered_ids("ws-1/s-1")["m-1"] == 1
        assert simnet.resend_count == 0  # the node itself handed it over once


class TestDeleteSession:
    """A delete records why; deleting again, or what never existed, changes nothing."""

    async def test_a_delete_records_its_reason_and_a_second_delete_answers_the_first(
        self, node: RunningNode
    ) -> None:
        await create(node.stub, "ws-1", "s-1")
        await wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
        stream = node.stub.WatchSession(
            pb.WatchSessionRequest(workspace_id="ws-1", session_id="s-1")
        )
        assert (await stream.read()).HasField("snapshot")
        request = pb.DeleteSessionRequest(
            workspace_id="ws-1", session_id="s-1", reason="churned", details="ticket 42"
        )
        deleted = await node.stub.DeleteSession(request)
        assert deleted.state == pb.SESSION_STATE_STOPPED
        assert (deleted.disconnect_reason, deleted.disconnect_details) == ("churned", "ticket 42")
        # The watch ends cleanly, after the STOPPED state change.
        rest = []
        async with asyncio.timeout(10):
            while (event := await stream.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                rest.append(event)
        assert await stream.code() == grpc.StatusCode.OK
        assert rest[-1].state_changed.state == pb.SESSION_STATE_STOPPED

        again = await node.stub.DeleteSession(
            pb.DeleteSessionRequest(workspace_id="ws-1", session_id="s-1", reason="other")
        )
        assert again.state == pb.SESSION_STATE_STOPPED and again.disconnect_reason == "churned"
        got = await node.stub.GetSession(
            pb.GetSessionRequest(workspace_id="ws-1", session_id="s-1")
        )
        assert got.state == pb.SESSION_STATE_STOPPED and got.disconnect_reason == "churned"
        meta = json.loads((node.storage / "workspace_ws-1" / "s-1" / "meta.json").read_text())
        assert meta["deleted"] is True and meta["disconnect_reason"] == "churned"
        listed = await node.stub.ListSessions(pb.ListSessionsRequest(workspace_id="ws-1"))
        assert list(listed.sessions) == []

    async def test_deleting_an_unknown_session_answers_stopped_and_writes_nothing(
        self, node: RunningNode
    ) -> None:
        deleted = await node.stub.DeleteSession(
            pb.DeleteSessionRequest(workspace_id="ws-1", session_id="never")
        )
        assert deleted.state == pb.SESSION_STATE_STOPPED
        assert deleted.disconnect_reason == "user_initiated"
        assert files_under(node.storage) == []
