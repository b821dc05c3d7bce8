"""A node restarted on the same storage brings its sessions back READY without a QR code, keeps
deduplicating sends, and delivers what it acknowledged before the restart exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from protos import session_pb2, session_pb2_grpc
from registry.accounts import WhatsappAccount, make_engine
from testkit import eventually, running_node, running_simnet
from tests.probes import stored_message

pb = session_pb2
SESSIONS = [("ws-1", "s-1"), ("ws-1", "s-2"), ("ws-2", "s-3")]


async def _state(stub: session_pb2_grpc.SessionServiceStub, ws: str, sid: str) -> int:
    got = await stub.GetSession(pb.GetSessionRequest(workspace_id=ws, session_id=sid), timeout=5)
    return int(got.state)


async def _all_ready(stub: session_pb2_grpc.SessionServiceStub) -> None:
    async def ready() -> bool:
        states = [await _state(stub, ws, sid) for ws, sid in SESSIONS]
        return all(state == pb.SESSION_STATE_READY for state in states)

    await eventually(ready, message="every session READY")


def _accounts(tmp_path: Path) -> dict[str, WhatsappAccount]:
    """Every row of the accounts DB, by session_id (read after the node flushed on stop)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'accounts.db'}")
    try:
        with Session(engine) as session:
            return {row.session_id: row for row in session.exec(select(WhatsappAccount))}
    finally:
        engine.dispose()


def _stored(tmp_path: Path) -> Any:
    return stored_message(tmp_path / "sessions", "ws-1", "s-1", "m-1")


def _send(ws: str, sid: str, client_message_id: str) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(
        workspace_id=ws, session_id=sid, client_message_id=client_message_id, to="+1", text="hi"
    )


class TestRestart:
    """Stop a node and start it again with the same id and storage."""

    async def test_sessions_come_back_ready_without_a_qr(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_simnet(pair_delay_ms=20) as simnet:
            async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
                stub = node.stub
                for ws, sid in SESSIONS:
                    await stub.CreateSession(
                        pb.CreateSessionRequest(workspace_id=ws, session_id=sid), timeout=5
                    )
                await stub.CreateSession(
                    pb.CreateSessionRequest(workspace_id="ws-3", session_id="gone")
                )
                await stub.DeleteSession(
                    pb.DeleteSessionRequest(workspace_id="ws-3", session_id="gone")
                )
                await _all_ready(stub)
                first = await stub.SendMessage(_send("ws-1", "s-1", "m-1"))
                await eventually(lambda: _stored(tmp_path).status != "QUEUED")
                assert simnet.delivered_ids("ws-1/s-1")["m-1"] == 1
            rows = await asyncio.to_thread(_accounts, tmp_path)
            assert {rows[sid].assigned_node_id for _, sid in SESSIONS} == {"node-1"}
            assert rows["gone"].disconnect_reason == "user_initiated"
            assert rows["s-1"].last_activity_at is not None
            qr_before = {f"{ws}/{sid}": simnet.qr_issued(f"{ws}/{sid}") for ws, sid in SESSIONS}
            assert all(count >= 1 for count in qr_before.values())

            async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
                server, stub = node.server, node.stub
                assert server.manager.hosted_count == len(SESSIONS)  # the deleted one stays gone
                await _all_ready(stub)
                qr_after = {account: simnet.qr_issued(account) for account in qr_before}
                assert qr_after == qr_before, "a restored session showed a new QR code"
                watch = stub.WatchSession(
                    pb.WatchSessionRequest(workspace_id="ws-1", session_id="s-1")
                )
                snapshot = (await watch.read()).snapshot
                watch.cancel()
                assert snapshot.state == pb.SESSION_STATE_READY and snapshot.qr_code == ""
                # The dedupe index came back from the outbox on disk.
                again = await stub.SendMessage(_send("ws-1", "s-1", "m-1"))
                assert again.duplicate and again.accept_time == first.accept_time
                gone = await stub.GetSession(
                    pb.GetSessionRequest(workspace_id="ws-3", session_id="gone")
                )
                assert gone.state == pb.SESSION_STATE_STOPPED
            assert simnet.delivered_ids("ws-1/s-1")["m-1"] == 1
            assert simnet.replaced_events == [] and simnet.resend_count == 0
            rows = await asyncio.to_thread(_accounts, tmp_path)
            assert all(rows[sid].instance_migration_count == 0 for _, sid in SESSIONS)

    async def test_acknowledged_message_is_delivered_once_after_a_restart(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        # Nobody scans the QR until the test says so: the node stops with the message queued.
        async with running_simnet(pair_delay_ms=-1) as simnet:
            async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
                stub = node.stub
                await stub.CreateSession(
                    pb.CreateSessionRequest(workspace_id="ws-1", session_id="s-1")
                )

                async def pending() -> bool:
                    return await _state(stub, "ws-1", "s-1") == pb.SESSION_STATE_QR_PENDING

                await eventually(pending, message="QR_PENDING")
                answer = await stub.SendMessage(_send("ws-1", "s-1", "m-1"))
                assert not answer.duplicate and answer.status == pb.MESSAGE_STATUS_QUEUED
            assert simnet.delivered_ids("ws-1/s-1")["m-1"] == 0
            assert _stored(tmp_path).status == "QUEUED"

            async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
                stub = node.stub
                # The restarted session shows a QR again (it was never paired); scan it now.
                await eventually(lambda: simnet.pair("ws-1/s-1"), message="a QR to scan")

                async def delivered() -> bool:
                    return simnet.delivered_ids("ws-1/s-1")["m-1"] == 1

                await eventually(delivered, message="m-1 delivered after the restart")
                assert await _state(stub, "ws-1", "s-1") == pb.SESSION_STATE_READY
                await eventually(lambda: _stored(tmp_path).status != "QUEUED")
            assert simnet.resend_count == 0
            assert simnet.delivered_ids("ws-1/s-1")["m-1"] == 1


class TestLoggedOutOnThePhone:
    """A pairing the phone ended (the network no longer knows the credentials): the session
    reports DISCONNECTED(logged_out), its stored credentials are removed, and it asks for a
    QR code again — it never retries the dead credentials."""

    async def test_the_credentials_are_removed_and_a_qr_shown(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        credentials = tmp_path / "sessions" / "workspace_ws-1" / "s-1" / "credentials.json"
        async with (
            running_simnet(pair_delay_ms=20) as simnet,
            running_node(tmp_path, etcd_url, cluster_name, simnet) as node,
        ):
            await node.stub.CreateSession(
                pb.CreateSessionRequest(workspace_id="ws-1", session_id="s-1"), timeout=5
            )

            async def ready() -> bool:
                return await _state(node.stub, "ws-1", "s-1") == pb.SESSION_STATE_READY

            await eventually(ready, message="READY")
        assert credentials.exists()
        # A network that never paired this account: to it the stored pairing is logged out.
        async with (
            running_simnet(pair_delay_ms=-1) as forgetful,
            running_node(tmp_path, etcd_url, cluster_name, forgetful) as node,
        ):

            async def asks_for_a_qr() -> bool:
                return await _state(node.stub, "ws-1", "s-1") == pb.SESSION_STATE_QR_PENDING

            await eventually(asks_for_a_qr, message="QR_PENDING after the logout")
            got = await node.stub.GetSession(
                pb.GetSessionRequest(workspace_id="ws-1", session_id="s-1"), timeout=5
            )
            assert got.disconnect_reason == "logged_out"
            assert not credentials.exists(), "credentials of an ended pairing kept"
