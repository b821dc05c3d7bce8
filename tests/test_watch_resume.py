"""Watch streams that resume: every session event is numbered and written to the session's
durable event log before a watcher hears of it (a new owner's first one says the session
moved); ``WatchSession(after_sequence=N)`` serves
every event after N — from memory, from the log, from a new owner after a failover — then the
live ones, with no gap and no repeat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from node.event_log import MAX_RETAINED_EVENTS, compacted, parse_events, retained
from node.events import EventKind, SessionEvent
from protos import session_pb2 as pb
from protos import session_pb2_grpc
from simnet import SimNet
from testkit import MeshSettings, eventually, running_node, running_process_mesh
from tests.calls import create, wait_state

SESSION = ("ws-resume", "s-1")


def _event(sequence: int, at_unix: float = 1000.0) -> SessionEvent:
    return SessionEvent(
        kind=EventKind.STATE_CHANGED, at_unix=at_unix, state="ready", sequence=sequence
    )


class TestTheLogFormat:
    def test_events_round_trip_and_a_torn_last_line_is_dropped(self) -> None:
        events = [
            _event(1),
            SessionEvent(kind=EventKind.MESSAGE_ACK, at_unix=2.0, message_id="m-1",
                         status="DELIVERED", sequence=2),
            SessionEvent(kind=EventKind.INBOUND_MESSAGE, at_unix=3.0, message_id="x",
                         sender="+1", text='héllo\n"', sequence=3),
        ]  # fmt: skip
        data = compacted(events)
        assert parse_events(data) == events
        assert parse_events(data + b'{"q":4,"k":"state_ch') == events
        assert parse_events(data + compacted([_event(2)])) == events  # not after 3: dropped

    def test_compaction_keeps_the_newest_and_always_the_last(self) -> None:
        many = [_event(n, at_unix=float(n)) for n in range(1, MAX_RETAINED_EVENTS + 50)]
        kept = retained(many, now_unix=float(MAX_RETAINED_EVENTS))
        assert len(kept) == MAX_RETAINED_EVENTS and kept[-1] == many[-1]
        old = [_event(1, at_unix=0.0), _event(2, at_unix=0.0)]
        assert retained(old, now_unix=1e12) == [old[-1]]  # the numbering goes on from it


def _keep_only_the_last_event(folder: Path) -> None:
    log = next(folder.rglob("events.log"))
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    log.write_bytes(lines[-1])


async def _watch(
    stub: session_pb2_grpc.SessionServiceStub, after: int, count: int
) -> list[pb.SessionEvent]:
    """The first ``count`` events of a watch after ``after`` (0: with its snapshot)."""
    request = pb.WatchSessionRequest(
        workspace_id=SESSION[0], session_id=SESSION[1], after_sequence=after
    )
    seen: list[pb.SessionEvent] = []
    call = stub.WatchSession(request, timeout=30)
    async for event in call:
        seen.append(event)
        if len(seen) == count:
            break
    call.cancel()
    return seen


def _sequences(events: list[pb.SessionEvent]) -> list[int]:
    return [event.sequence for event in events if event.WhichOneof("event") != "snapshot"]


async def _send(stub: session_pb2_grpc.SessionServiceStub, message_id: str) -> None:
    await stub.SendMessage(
        pb.SendMessageRequest(
            workspace_id=SESSION[0], session_id=SESSION[1], client_message_id=message_id,
            to="+14155550101", text="hi",
        ),
        timeout=10,
    )  # fmt: skip


class TestOnOneNode:
    async def test_a_watcher_that_resumes_gets_what_it_missed_once(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
            await create(node.stub, *SESSION)
            await wait_state(node.stub, *SESSION, pb.SESSION_STATE_READY)

            async def ready_logged() -> pb.SessionEvent | None:
                # The meta says READY a moment before its event is on disk and published: a
                # snapshot then shows READY, and the READY event follows it (once).
                (snapshot,) = await _watch(node.stub, 0, 1)
                return snapshot if snapshot.sequence >= 4 else None

            # QR_PENDING, the QR code, AUTHENTICATED, READY.
            snapshot = await eventually(ready_logged, message="READY's event is published")
            assert snapshot.WhichOneof("event") == "snapshot"
            last = snapshot.sequence
            for index in range(3):  # while nobody watches: 3 messages, accepted and acked 3x
                await _send(node.stub, f"m-{index}")

            async def acked() -> int:
                events = await _watch(node.stub, last, 12)
                return len(events)

            await eventually(acked, message="the acks are logged")
            missed = await _watch(node.stub, last, 12)
            assert _sequences(missed) == list(range(last + 1, last + 13))
            statuses = [each.message_ack.status for each in missed[:4]]
            assert statuses[0] == pb.MESSAGE_STATUS_QUEUED  # message.accepted comes first
            assert all(each.WhichOneof("event") == "message_ack" for each in missed)
            # From the middle: the rest, then a live event after them, each once.
            middle = last + 4
            resumed = asyncio.create_task(_watch(node.stub, middle, 7))
            await _send(node.stub, "m-live")  # its acks: live, or in the backlog if first
            events = await resumed
            assert _sequences(events) == list(range(middle + 1, middle + 8))

    async def test_the_numbering_survives_a_restart_of_the_node(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
            await create(node.stub, *SESSION)
            await wait_state(node.stub, *SESSION, pb.SESSION_STATE_READY)
            (snapshot,) = await _watch(node.stub, 0, 1)
        async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
            await wait_state(node.stub, *SESSION, pb.SESSION_STATE_READY)
            events = await _watch(node.stub, snapshot.sequence, 2)
            # The old run's STOPPED, then the new run's first state change: no gap.
            assert _sequences(events) == [snapshot.sequence + 1, snapshot.sequence + 2]
            stopped = events[0].state_changed
            assert stopped.state == pb.SESSION_STATE_STOPPED

    async def test_an_after_sequence_past_what_is_kept_is_out_of_range(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
            await create(node.stub, *SESSION)
            await wait_state(node.stub, *SESSION, pb.SESSION_STATE_READY)
        # Only the newest event kept (as after a long compaction): the first are gone.
        await asyncio.to_thread(_keep_only_the_last_event, tmp_path)
        async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
            await wait_state(node.stub, *SESSION, pb.SESSION_STATE_READY)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _watch(node.stub, 1, 1)
            assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.timeout(180)
async def test_a_watcher_resumes_across_a_gateway_restart_and_a_failover(tmp_path: Path) -> None:
    settings = MeshSettings(node_count=2, lease_ttl_seconds=2)
    async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
        async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            created = await create(stub, *SESSION)
            await wait_state(stub, *SESSION, pb.SESSION_STATE_READY)
            (snapshot,) = await _watch(stub, 0, 1)
            owner = created.node_id or snapshot.snapshot.node_id
            await _send(stub, "m-before")
        await mesh.restart_gateway()
        await mesh.kill_node(owner)
        async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)

            async def moved() -> bool:
                got = await stub.GetSession(
                    pb.GetSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1]),
                    timeout=5,
                )
                return bool(got.state == pb.SESSION_STATE_READY and got.node_id != owner)

            await eventually(moved, timeout_seconds=30, message="READY on the survivor")
            await _send(stub, "m-after")

            request = pb.WatchSessionRequest(
                workspace_id=SESSION[0], session_id=SESSION[1],
                after_sequence=snapshot.sequence,
            )  # fmt: skip
            seen: list[pb.SessionEvent] = []
            call = stub.WatchSession(request, timeout=30)

            async def read() -> None:
                async for event in call:
                    seen.append(event)

            reader = asyncio.create_task(read())

            def has_after_ack() -> bool:
                return any(
                    each.WhichOneof("event") == "message_ack"
                    and each.message_ack.client_message_id == "m-after"
                    and each.message_ack.status == pb.MESSAGE_STATUS_DELIVERED
                    for each in seen
                )

            await eventually(has_after_ack, timeout_seconds=20, message="m-after delivered")
            call.cancel()
            reader.cancel()
            sequences = _sequences(seen)
            print(
                f"resumed after {snapshot.sequence}: {[each.WhichOneof('event') for each in seen]}"
            )
            states = [each.state_changed.state for each in seen if each.HasField("state_changed")]
            assert pb.SESSION_STATE_READY in states, "the survivor's own events came through"
            kinds = [each.WhichOneof("event") for each in seen]
            moved_event = seen[kinds.index("session_moved")].session_moved
            assert moved_event.previous_node_id == owner
            assert moved_event.node_id not in ("", owner)
            first_ready = next(
                index for index, each in enumerate(seen)
                if each.HasField("state_changed")
                and each.state_changed.state == pb.SESSION_STATE_READY
            )  # fmt: skip
            assert kinds.index("session_moved") < first_ready, kinds
            assert sequences == list(range(snapshot.sequence + 1, sequences[-1] + 1)), sequences
            acked = {
                each.message_ack.client_message_id for each in seen
                if each.WhichOneof("event") == "message_ack"
            }  # fmt: skip
            assert {"m-before", "m-after"} <= acked
