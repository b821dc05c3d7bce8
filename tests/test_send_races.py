"""Races the fence cannot see: a send whose caller leaves during a slow flush, a send in flight
while its slot is handed off, and a send whose node loses its lease while the record is on its
way to the disk. Every send the mesh acknowledges is delivered once; one it answers with
UNAVAILABLE was not acknowledged there, and the retry with the same id (the gateway's own)
gets the final answer; no ``seq`` is handed out twice.

The slow disk is a fault hook on one node's storage threads (``storage-<node_id>…``): its
``fdatasync`` waits at a gate the test opens."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from node import commit_io, message_log
from node.storage import FileTicket, OutboxEntry, SessionStorage
from node.storage_errors import LeaseLapsed, StaleWrite
from protos import admin_pb2, admin_pb2_grpc, session_pb2
from registry import (
    RETRY_AFTER_METADATA_KEY,
    MessageStatus,
    clear_pin,
    connect_etcd,
    set_pin,
    slot_of,
)
from testkit import (
    InProcessMesh,
    eventually,
    running_inprocess_mesh,
    running_node,
    running_simnet,
)
from tests.calls import create, error_of, wait_state
from tests.probes import trailing_dict

pb = session_pb2
SESSION = ("ws-race", "s-1")
ACCOUNT = "ws-race/s-1"


class _SlowDisk:
    """Holds ``fdatasync`` on one node's storage threads until opened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, node_id: str) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()
        prefix = f"storage-{node_id}"
        real = commit_io.fdatasync_file

        def held(descriptor: int) -> None:
            if threading.current_thread().name.startswith(prefix):
                self.reached.set()
                self._open.wait(timeout=30)
            real(descriptor)

        monkeypatch.setattr(commit_io, "fdatasync_file", held)

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def slow_disks() -> Iterator[list[_SlowDisk]]:
    made: list[_SlowDisk] = []
    yield made
    for disk in made:
        disk.open()  # never leave a storage thread waiting after the test


async def _mesh_with_session(mesh: InProcessMesh) -> str:
    """Create the session; the node it runs on."""
    async with mesh.stub() as stub:
        await stub.CreateSession(
            pb.CreateSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1]), timeout=10
        )
    placed = await mesh.wait_ready([SESSION])
    return placed[ACCOUNT]


def _send(message_id: str) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(
        workspace_id=SESSION[0],
        session_id=SESSION[1],
        client_message_id=message_id,
        to="+14155550199",
        text=f"text of {message_id}",
    )


async def _delivered_once(mesh: InProcessMesh, message_id: str) -> None:
    await eventually(
        lambda: mesh.simnet.delivered_ids(ACCOUNT)[message_id] >= 1,
        timeout_seconds=15,
        message=f"{message_id} delivered",
    )
    assert mesh.simnet.delivered_ids(ACCOUNT)[message_id] == 1


async def _stored_seqs(mesh: InProcessMesh) -> list[int]:
    entries = await SessionStorage(mesh.storage).load_outbox(*SESSION)
    return [entry.seq for entry in entries]


class TestCallerLeavesDuringASlowFlush:
    """The caller's deadline passes while its message is being flushed."""

    async def test_the_message_is_delivered_once_and_its_seq_never_reused(
        self,
        tmp_path: Path,
        etcd_url: str,
        cluster_name: str,
        monkeypatch: pytest.MonkeyPatch,
        slow_disks: list[_SlowDisk],
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            owner = await _mesh_with_session(mesh)
            disk = _SlowDisk(monkeypatch, owner)
            slow_disks.append(disk)
            async with mesh.stub() as stub:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.SendMessage(_send("m-1"), timeout=0.5)
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert disk.reached.is_set()
                disk.open()
                # Accepted after all: delivered now (not at some later restore)...
                await _delivered_once(mesh, "m-1")
                # ...and a retry says so instead of sending it again.
                retried = await stub.SendMessage(_send("m-1"), timeout=10)
                assert retried.duplicate
                await stub.SendMessage(_send("m-2"), timeout=10)
            await _delivered_once(mesh, "m-2")
            seqs = await _stored_seqs(mesh)
            assert len(seqs) == len(set(seqs)) == 2, f"a seq was handed out twice: {seqs}"


class TestSendDuringAHandoff:
    """The owner is asked to drain while a send's record is still on its way to the disk."""

    async def test_the_acknowledged_message_is_delivered_by_the_new_owner(
        self,
        tmp_path: Path,
        etcd_url: str,
        cluster_name: str,
        monkeypatch: pytest.MonkeyPatch,
        slow_disks: list[_SlowDisk],
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            owner = await _mesh_with_session(mesh)
            disk = _SlowDisk(monkeypatch, owner)
            slow_disks.append(disk)
            async with (
                mesh.stub() as stub,
                grpc.aio.insecure_channel(mesh.gateway.address) as channel,
            ):
                send = stub.SendMessage(_send("m-1"), timeout=30)
                await eventually(disk.reached.is_set, timeout_seconds=10, message="flush held")
                admin = admin_pb2_grpc.AdminServiceStub(channel)
                await admin.DrainNode(admin_pb2.DrainNodeRequest(node_id=owner), timeout=10)
                await eventually(
                    lambda: mesh.nodes[owner].slots.is_draining,
                    timeout_seconds=10,
                    message=f"{owner} draining",
                )
                disk.open()
                answer = await send  # acknowledged: so it must reach the network
                assert not answer.duplicate
            placed = await mesh.wait_ready([SESSION])
            assert placed[ACCOUNT] != owner
            await _delivered_once(mesh, "m-1")


class TestOwnerLosesItsLeaseMidWrite:
    """The owner gives its lease up while a send's record is on its way to the disk (it
    counts as unhealthy: it stays without a lease), and the other node takes over."""

    async def test_the_send_is_refused_there_and_delivered_once_by_the_new_owner(
        self,
        tmp_path: Path,
        etcd_url: str,
        cluster_name: str,
        monkeypatch: pytest.MonkeyPatch,
        slow_disks: list[_SlowDisk],
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            owner = await _mesh_with_session(mesh)
            other = next(node_id for node_id in mesh.nodes if node_id != owner)
            disk = _SlowDisk(monkeypatch, owner)
            slow_disks.append(disk)
            heartbeat = mesh.nodes[owner].heartbeat
            async with mesh.stub() as stub:
                send = stub.SendMessage(_send("m-1"), timeout=30)
                await eventually(disk.reached.is_set, timeout_seconds=10, message="flush held")
                # The heartbeat asks this before every refresh: no lease while it says no.
                monkeypatch.setattr(heartbeat, "_is_storage_healthy", lambda: False)
                await eventually(
                    lambda: mesh.nodes[other].manager.hosted_count == 1,
                    timeout_seconds=15,
                    message=f"{other} took the session over",
                )
                disk.open()
                # The old owner refuses it (UNAVAILABLE: not acknowledged there), the gateway
                # sends it again to the new owner, whose answer is final: a duplicate if the
                # record reached the log it read, a fresh accept if not. Delivered once either way.
                answer = await send
                assert answer.client_message_id == "m-1"
            await _delivered_once(mesh, "m-1")
            monkeypatch.setattr(heartbeat, "_is_storage_healthy", lambda: True)


def _queued(client_message_id: str, seq: int) -> OutboxEntry:
    return OutboxEntry(
        client_message_id=client_message_id,
        to="+14155550101",
        text="hello",
        status=MessageStatus.QUEUED,
        accepted_at_unix=time.time(),
        seq=seq,
        accepted_by_node_id="node-old",
    )


def _take_the_path_over(storage_root: Path) -> None:
    """What a new owner's open does to the log: a compacted file of its own renamed over it."""
    log = storage_root / "workspace_ws-race" / "s-1" / "messages.log"
    fresh = log.with_name("new-owner.tmp")
    fresh.write_bytes(message_log.compacted([_queued("m-new", 1)]))
    os.replace(fresh, log)


class TestAFormerOwnersLateWrites:
    """A node that lost the session (its lease lapsed, a newer owner opened the log) and
    writes late: the write goes to the file it had, never into the newer owner's."""

    async def test_a_withdrawal_after_the_session_stopped_never_reaches_the_new_owners_file(
        self, tmp_path: Path
    ) -> None:
        former, newer = SessionStorage(tmp_path), SessionStorage(tmp_path)
        entry = _queued("m-1", 1)
        ticket = FileTicket()
        await former.append_accepted(*SESSION, entry, ticket=ticket)
        await former.close_messages(*SESSION)  # its session stopped: the log is closed
        assert [e.client_message_id for e in await newer.open_messages(*SESSION)] == ["m-1"]
        # The former owner learns only now that its send failed (its lease had lapsed).
        former.withdraw_accepted(*SESSION, entry, ticket)
        await former.close_messages(*SESSION)
        kept = await newer.load_outbox(*SESSION)
        assert [(e.client_message_id, e.status) for e in kept] == [("m-1", MessageStatus.QUEUED)]

    async def test_a_withdrawal_in_time_withdraws_the_record_for_every_later_reader(
        self, tmp_path: Path
    ) -> None:
        former = SessionStorage(tmp_path)
        entry = _queued("m-1", 1)
        ticket = FileTicket()
        await former.append_accepted(*SESSION, entry, ticket=ticket)
        former.withdraw_accepted(*SESSION, entry, ticket)
        await former.close_messages(*SESSION)
        assert await SessionStorage(tmp_path).open_messages(*SESSION) == []
        # A retry of the same id is accepted anew, under a new seq, and counts.
        await former.append_accepted(*SESSION, _queued("m-1", 2))
        await former.close_messages(*SESSION)
        kept = await SessionStorage(tmp_path).load_outbox(*SESSION)
        assert [(e.client_message_id, e.seq) for e in kept] == [("m-1", 2)]

    async def test_paused_between_its_lease_check_and_its_write(self, tmp_path: Path) -> None:
        former = SessionStorage(tmp_path)
        await former.append_accepted(*SESSION, _queued("m-0", 1))
        await former.close_messages(*SESSION)

        def lease_checked_then_paused() -> bool:
            # The check passes; while the writer is paused right after it, the lease
            # expires and a newer owner takes the log over.
            _take_the_path_over(tmp_path)
            return True

        await former.append_accepted(
            *SESSION, _queued("m-late", 2), may_write=lease_checked_then_paused
        )
        kept = await SessionStorage(tmp_path).load_outbox(*SESSION)
        assert [e.client_message_id for e in kept] == ["m-new"]

    async def test_a_compaction_after_the_lease_lapsed_replaces_nothing(
        self, tmp_path: Path
    ) -> None:
        former = SessionStorage(tmp_path)
        await former.append_accepted(*SESSION, _queued("m-0", 1))
        await former.close_messages(*SESSION)
        _take_the_path_over(tmp_path)
        with pytest.raises(LeaseLapsed):
            await former.rewrite_messages(*SESSION, [_queued("m-0", 1)], may_write=lambda: False)
        kept = await SessionStorage(tmp_path).load_outbox(*SESSION)
        assert [e.client_message_id for e in kept] == ["m-new"]


class TestStoredButNotRunningHere:
    """A session this node serves the workspace of, stored and not deleted, but not in its
    table (its restore still under way, or stalled): callers are told to retry, never that a
    session they created does not exist."""

    async def test_send_and_get_answer_unavailable_not_not_found(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with (
            running_simnet() as simnet,
            running_node(tmp_path, etcd_url, cluster_name, simnet) as running,
        ):
            await create(running.stub, *SESSION)
            await wait_state(running.stub, *SESSION, pb.SESSION_STATE_READY)
            manager = running.server.manager
            # As a restore that has not brought it up yet leaves it: stored, not hosted.
            await manager.stop_workspaces({SESSION[0]})
            request = pb.SendMessageRequest(
                workspace_id=SESSION[0],
                session_id=SESSION[1],
                client_message_id="m-1",
                to="+14155550101",
                text="hello",
            )
            sent = await error_of(running.stub.SendMessage(request, timeout=5))
            got = await error_of(
                running.stub.GetSession(
                    pb.GetSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1]),
                    timeout=5,
                )
            )
            for error in (sent, got):
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                assert trailing_dict(error).get(RETRY_AFTER_METADATA_KEY)
            never = await error_of(
                running.stub.GetSession(
                    pb.GetSessionRequest(workspace_id=SESSION[0], session_id="never"), timeout=5
                )
            )
            assert never.code() == grpc.StatusCode.NOT_FOUND


class TestTakeoverFromAPinnedOwner:
    """A workspace comes back from its pinned owner to the slot's owner, whose slot key may be
    older than the pin's: its files are fenced by a revision newer than both, so the former
    pinned owner's late write is refused, and the slot owner keeps running the session."""

    async def test_the_former_pinned_owners_late_meta_write_is_refused(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            slot_owner = await _mesh_with_session(mesh)
            pinned = next(node_id for node_id in mesh.nodes if node_id != slot_owner)
            storage = SessionStorage(mesh.storage)
            client = await connect_etcd(etcd_url)
            keys = mesh.gateway_keys
            try:
                await set_pin(client, keys, SESSION[0], pinned)
                await eventually(
                    lambda: _runs_on(mesh, pinned), timeout_seconds=15, message="pinned"
                )
                pin_meta = await storage.load_meta(*SESSION)
                assert pin_meta is not None
                server = mesh.nodes[slot_owner]
                slot = slot_of(SESSION[0], server.ring.slot_count)
                slot_epoch = server.slots.slots()[slot].epoch
                assert slot_epoch < pin_meta.owner_epoch  # the case: the slot key is older

                await clear_pin(client, keys, SESSION[0])
                await eventually(
                    lambda: _runs_on(mesh, slot_owner), timeout_seconds=15, message="taken back"
                )
                taken = await storage.load_meta(*SESSION)
                assert taken is not None and taken.owner_epoch > pin_meta.owner_epoch

                # The former pinned owner, paused before its last write, writes now.
                with pytest.raises(StaleWrite):
                    await storage.save_meta(pin_meta, fence_epoch=pin_meta.owner_epoch)
                async with mesh.stub() as stub:
                    await stub.SendMessage(
                        pb.SendMessageRequest(
                            workspace_id=SESSION[0],
                            session_id=SESSION[1],
                            client_message_id="after-takeover",
                            to="+14155550101",
                            text="still here",
                        ),
                        timeout=10,
                    )
                await eventually(
                    lambda: "after-takeover" in mesh.simnet.delivered_ids(ACCOUNT),
                    timeout_seconds=15,
                    message="delivered by the slot owner",
                )
                assert mesh.simnet.replaced_events == []
            finally:
                await client.close()


async def _runs_on(mesh: InProcessMesh, node_id: str) -> bool:
    return (await mesh.wait_ready([SESSION]))[f"{SESSION[0]}/{SESSION[1]}"] == node_id
