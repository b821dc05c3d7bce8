"""Every queue has a bound and a policy when full: a session's outbox (a quota:
RESOURCE_EXHAUSTED past it, nothing written), its watchers, its driver's events (acks and
inbound messages dropped and counted, QR codes coalesced, state changes kept), and the
writes waiting for the storage (a durable write refused, a status dropped and counted)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from node import commit_io
from node.driver_events import DriverEventQueue
from node.drivers.base import DriverEvent, DriverEventKind
from node.storage import OutboxEntry, SessionStorage
from node.storage_errors import StorageBusy
from protos import session_pb2 as pb
from registry import RETRY_AFTER_METADATA_KEY, MessageStatus
from simnet import SimNet
from testkit import RunningNode, eventually, running_node, running_simnet
from tests.calls import create, error_of, wait_state
from tests.probes import trailing_dict

SESSION = ("ws-bounds", "s-1")
ACCOUNT = "ws-bounds/s-1"


def _ack(message_id: str) -> DriverEvent:
    return DriverEvent(kind=DriverEventKind.ACK, message_id=message_id, status="SENT")


class TestDriverEventQueue:
    async def test_acks_past_the_bound_are_dropped_and_counted(self) -> None:
        dropped: list[DriverEventKind] = []
        queue = DriverEventQueue(max_events=3, on_dropped=dropped.append)
        for index in range(5):
            queue.offer(_ack(f"m-{index}"))
        assert len(queue) == 3
        assert dropped == [DriverEventKind.ACK, DriverEventKind.ACK]
        got = [await queue.get() for _ in range(3)]
        assert [event.message_id for event in got if event is not None] == ["m-0", "m-1", "m-2"]

    async def test_a_state_change_is_never_lost_to_a_flood_of_acks(self) -> None:
        dropped: list[DriverEventKind] = []
        queue = DriverEventQueue(max_events=2, on_dropped=dropped.append)
        queue.offer(_ack("m-0"))
        queue.offer(_ack("m-1"))
        queue.offer(DriverEvent(kind=DriverEventKind.DISCONNECTED, reason="network"))
        queue.close()
        kinds = []
        while (event := await queue.get()) is not None:
            kinds.append(event.kind)
        assert kinds == [DriverEventKind.ACK, DriverEventKind.DISCONNECTED]
        assert dropped == [DriverEventKind.ACK]  # the oldest ack made room

    async def test_qr_codes_are_coalesced_to_the_newest(self) -> None:
        queue = DriverEventQueue(max_events=2)
        queue.offer(DriverEvent(kind=DriverEventKind.QR, qr_code="old"))
        queue.offer(DriverEvent(kind=DriverEventKind.READY))
        queue.offer(DriverEvent(kind=DriverEventKind.QR, qr_code="new"))
        got = [await queue.get(), await queue.get()]
        assert [(e.kind, e.qr_code) for e in got if e is not None] == [
            (DriverEventKind.READY, ""),
            (DriverEventKind.QR, "new"),
        ]


@pytest.fixture
async def unpaired_simnet() -> AsyncIterator[SimNet]:
    """A simnet where nobody scans a QR code: sessions wait in QR_PENDING, sends queue."""
    async with running_simnet(pair_delay_ms=-1) as simnet:
        yield simnet


def _refused(metric_limit: str, node_id: str = "node-1") -> float:
    value = REGISTRY.get_sample_value(
        "sessionmesh_node_refused_total", {"node_id": node_id, "limit": metric_limit}
    )
    return value or 0.0


class TestOutboxQuota:
    async def test_a_send_past_the_quota_is_refused_and_writes_nothing(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, unpaired_simnet: SimNet
    ) -> None:
        async with running_node(
            tmp_path,
            etcd_url,
            cluster_name,
            unpaired_simnet,
            extra_flags=["--outbox-max-queued", "3"],
        ) as running:
            await create(running.stub, *SESSION)
            await wait_state(running.stub, *SESSION, pb.SESSION_STATE_QR_PENDING)
            for index in range(3):
                await _send(running, f"m-{index}")
            refused_before = _refused("outbox_quota")
            error = await error_of(_send(running, "m-3"))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "OUTBOX_MAX_QUEUED" in (error.details() or "")
            assert trailing_dict(error).get(RETRY_AFTER_METADATA_KEY)
            assert _refused("outbox_quota") == refused_before + 1
            replay = await _send(running, "m-0")  # a retry of an accepted one still answers
            assert replay.duplicate
            stored = await SessionStorage(running.storage).load_outbox(*SESSION)
            assert [entry.client_message_id for entry in stored] == ["m-0", "m-1", "m-2"]

            # Once the network has them, the quota frees again.
            assert unpaired_simnet.pair(ACCOUNT)
            await eventually(
                lambda: _delivered(unpaired_simnet) == {"m-0", "m-1", "m-2"},
                timeout_seconds=15,
                message="the queued messages delivered",
            )
            await eventually(
                lambda: _accepted(running, "m-3"), timeout_seconds=15, message="m-3 accepted"
            )


async def _send(running: RunningNode, message_id: str) -> pb.SendMessageResponse:
    request = pb.SendMessageRequest(
        workspace_id=SESSION[0],
        session_id=SESSION[1],
        client_message_id=message_id,
        to="+14155550101",
        text=f"hello {message_id}",
    )
    response: pb.SendMessageResponse = await running.stub.SendMessage(request, timeout=10)
    return response


async def _accepted(running: RunningNode, message_id: str) -> bool:
    try:
        await _send(running, message_id)
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return False
        raise
    return True


def _delivered(simnet: SimNet) -> set[str]:
    return set(simnet.delivered_ids(ACCOUNT))


class TestWatchersPerSession:
    async def test_one_watcher_past_the_limit_is_refused(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, unpaired_simnet: SimNet
    ) -> None:
        async with running_node(
            tmp_path,
            etcd_url,
            cluster_name,
            unpaired_simnet,
            extra_flags=["--max-watchers-per-session", "2"],
        ) as running:
            await create(running.stub, *SESSION)
            await wait_state(running.stub, *SESSION, pb.SESSION_STATE_QR_PENDING)
            request = pb.WatchSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1])
            watchers = [running.stub.WatchSession(request) for _ in range(2)]
            for watcher in watchers:
                await watcher.read()  # the snapshot: the subscription is open
            third = running.stub.WatchSession(request)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await third.read()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "MAX_WATCHERS_PER_SESSION" in (refused.value.details() or "")

            watchers[0].cancel()  # one leaves: there is room again

            async def can_watch() -> bool:
                again = running.stub.WatchSession(request)
                try:
                    await again.read()
                except grpc.aio.AioRpcError:
                    return False
                finally:
                    again.cancel()
                return True

            await eventually(can_watch, timeout_seconds=10, message="a watcher admitted again")
            watchers[1].cancel()


class _HungDisk:
    """``fdatasync`` on the storage threads waits until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached = threading.Event()
        self._released = threading.Event()
        real = commit_io.fdatasync_file

        def held(descriptor: int) -> None:
            if threading.current_thread().name.startswith("storage"):
                self.reached.set()
                self._released.wait(timeout=30)
            real(descriptor)

        monkeypatch.setattr(commit_io, "fdatasync_file", held)

    def release(self) -> None:
        self._released.set()


@pytest.fixture
def hung_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[_HungDisk]:
    disk = _HungDisk(monkeypatch)
    yield disk
    disk.release()


def _entry(message_id: str, seq: int) -> OutboxEntry:
    return OutboxEntry(
        client_message_id=message_id,
        to="+14155550101",
        text="hello",
        status=MessageStatus.QUEUED,
        accepted_at_unix=1.0,
        seq=seq,
        accepted_by_node_id="node-1",
    )


class TestStorageQueue:
    async def test_a_full_queue_refuses_durable_writes_and_drops_statuses(
        self, tmp_path: Path, hung_disk: _HungDisk
    ) -> None:
        limits: list[str] = []
        storage = SessionStorage(
            tmp_path,
            max_queued_writes=2,
            on_dropped=lambda: limits.append("storage_statuses"),
            on_refused=lambda: limits.append("storage_queue"),
        )
        first = asyncio.create_task(storage.append_accepted(*SESSION, _entry("m-0", 1)))
        await eventually(hung_disk.reached.is_set, timeout_seconds=5, message="a flush hangs")
        queued = [
            asyncio.create_task(storage.append_accepted(*SESSION, _entry(f"m-{n}", n + 1)))
            for n in (1, 2)
        ]
        await asyncio.sleep(0)  # both are queued behind the hung group
        with pytest.raises(StorageBusy) as refused:
            await storage.append_accepted(*SESSION, _entry("m-3", 4))
        assert refused.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.retry_after_ms > 0
        storage.append_status(*SESSION, "m-0", MessageStatus.SENT)  # dropped, not queued
        assert limits == ["storage_queue", "storage_statuses"]

        hung_disk.release()
        await asyncio.gather(first, *queued)
        await storage.close_messages(*SESSION)
        stored = await SessionStorage(tmp_path).load_outbox(*SESSION)
        assert [(e.client_message_id, e.status) for e in stored] == [
            ("m-0", MessageStatus.QUEUED),
            ("m-1", MessageStatus.QUEUED),
            ("m-2", MessageStatus.QUEUED),
        ]
        storage.close()
