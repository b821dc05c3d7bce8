"""WatchSession streams a session's events (acks of its sends among them); a watcher that
stops reading is dropped with UNAVAILABLE and the others go on unharmed."""

from __future__ import annotations

import asyncio

import pytest

from node.events import Broadcaster, EventKind, SessionEvent
from protos import session_pb2 as pb
from registry import Unavailable
from testkit import RunningNode
from tests.calls import create, wait_state


class TestEvents:
    """A watcher sees what happens to the session after its snapshot."""

    async def test_a_watch_sees_the_ack_of_a_send(self, node: RunningNode) -> None:
        await create(node.stub, "ws-1", "s-1")
        await wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
        stream = node.stub.WatchSession(
            pb.WatchSessionRequest(workspace_id="ws-1", session_id="s-1")
        )
        assert (await stream.read()).HasField("snapshot")
        await node.stub.SendMessage(
            pb.SendMessageRequest(
                workspace_id="ws-1", session_id="s-1", client_message_id="m-7", to="+1", text="yo"
            )
        )
        acks: list[int] = []
        async with asyncio.timeout(10):
            while len(acks) < 2:
                event = await stream.read()
                if event.HasField("message_ack"):
                    assert event.message_ack.client_message_id == "m-7"
                    acks.append(event.message_ack.status)
        # Accepted into the outbox first (message.accepted), then the network's ack.
        assert acks == [pb.MESSAGE_STATUS_QUEUED, pb.MESSAGE_STATUS_SENT]
        stream.cancel()


class TestSlowWatcher:
    """A watcher that stops reading is dropped with UNAVAILABLE; the others go on unharmed."""

    async def test_an_overflow_drops_only_the_slow_watcher(self) -> None:
        broadcaster = Broadcaster(max_queued_events=4)
        slow, fast = broadcaster.subscribe(), broadcaster.subscribe()
        received: list[SessionEvent] = []

        async def consume() -> None:
            async for event in fast.events():
                received.append(event)

        consumer = asyncio.create_task(consume())
        for index in range(10):
            broadcaster.publish(SessionEvent(kind=EventKind.INBOUND_MESSAGE, at_unix=index))
            await asyncio.sleep(0)  # one loop turn: the fast watcher reads as it goes
        assert not slow.is_open and broadcaster.subscriber_count == 1
        broadcaster.close_all()
        await consumer
        assert [event.at_unix for event in received] == list(range(10))
        with pytest.raises(Unavailable, match="fell behind"):
            async for _ in slow.events():
                pass
