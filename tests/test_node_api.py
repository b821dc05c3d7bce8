"""One real node's SessionService: lifecycle, idempotency, limits, validation, paging, deletion,
ownership redirects, health and reflection (real etcd, real simnet, SQLite, port 0)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node import NodeServer, load_config, start_node
from node.drivers.base import Driver, DriverFactory
from node.events import Broadcaster, EventKind, SessionEvent
from protos import SESSION_SERVICE_NAME, session_pb2, session_pb2_grpc
from registry import (
    OWNER_METADATA_KEY,
    ClusterKeys,
    NodeRecord,
    NodeRegistration,
    Unavailable,
    connect_etcd,
)
from simnet import SimNet
from tests.waiting import eventually

pb = session_pb2
PHONE = "+14155550100"


@dataclass
class RunningNode:
    """A started node, a stub on it, and where it stores sessions."""

    server: NodeServer
    stub: session_pb2_grpc.SessionServiceStub
    channel: grpc.aio.Channel
    storage: Path


@asynccontextmanager
async def running_node(
    tmp_path: Path,
    etcd_url: str,
    cluster: str,
    simnet: SimNet,
    *,
    max_sessions: int = 500,
    driver_factory: DriverFactory | None = None,
) -> AsyncIterator[RunningNode]:
    """Start node-1 on port 0; stop it (and close the channel) afterwards."""
    storage = tmp_path / "sessions"
    config = load_config(
        [
            "--node-id", "node-1",
            "--listen", "127.0.0.1:0",
            "--etcd", etcd_url,
            "--cluster", cluster,
            "--storage", str(storage),
            "--max-sessions", str(max_sessions),
            "--database-url", f"sqlite:///{tmp_path / 'accounts.db'}",
            "--simnet", simnet.address,
            "--lease-ttl-seconds", "2",
        ],
        environ={},
    )  # fmt: skip
    server = await start_node(config, driver_factory=driver_factory)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield RunningNode(
                server, session_pb2_grpc.SessionServiceStub(channel), channel, storage
            )
    finally:
        await server.stop(grace_seconds=1)


@asynccontextmanager
async def running_simnet(*, pair_delay_ms: int = 20) -> AsyncIterator[SimNet]:
    """A simnet on port 0; a negative ``pair_delay_ms`` means nobody scans the QR."""
    simnet = SimNet(pair_delay_ms=pair_delay_ms, ack_delay_ms=1)
    await simnet.start()
    try:
        yield simnet
    finally:
        await simnet.stop()


@pytest.fixture
async def simnet() -> AsyncIterator[SimNet]:
    """simnet that pairs every QR after 20 ms."""
    async with running_simnet() as net:
        yield net


@pytest.fixture
async def node(
    tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
) -> AsyncIterator[RunningNode]:
    """A node with the default limits."""
    async with running_node(tmp_path, etcd_url, cluster_name, simnet) as running:
        yield running


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


async def _create(stub: session_pb2_grpc.SessionServiceStub, ws: str, sid: str) -> pb.Session:
    request = pb.CreateSessionRequest(workspace_id=ws, session_id=sid, phone_number=PHONE)
    return await stub.CreateSession(request, timeout=5)


async def _wait_state(
    stub: session_pb2_grpc.SessionServiceStub, ws: str, sid: str, state: int
) -> pb.Session:
    async def reached() -> pb.Session | None:
        got = await stub.GetSession(pb.GetSessionRequest(workspace_id=ws, session_id=sid))
        return got if got.state == state else None

    result: pb.Session = await eventually(reached, message=f"{ws}/{sid} in state {state}")
    return result


class TestLifecycle:
    """A new session shows a QR code, pairs, and reaches READY; watchers see it happen."""

    async def test_watch_sees_qr_pending_then_ready(self, node: RunningNode) -> None:
        await _create(node.stub, "ws-1", "s-1")
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

    async def test_qr_code_while_pending(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with (
            running_simnet(pair_delay_ms=-1) as simnet,
            running_node(tmp_path, etcd_url, cluster_name, simnet) as node,
        ):
            await _create(node.stub, "ws-1", "s-1")
            pending = await _wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_QR_PENDING)
            qr = await node.stub.GetQrCode(
                pb.GetQrCodeRequest(workspace_id="ws-1", session_id="s-1")
            )
            assert qr.code and qr.code == pending.qr_code
            assert qr.expire_time.seconds > 0

    async def test_no_qr_code_once_ready(self, node: RunningNode) -> None:
        await _create(node.stub, "ws-1", "s-1")
        await _wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
        error = await _error(
            node.stub.GetQrCode(pb.GetQrCodeRequest(workspace_id="ws-1", session_id="s-1"))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "no QR code" in (error.details() or "")


class TestCreateRules:
    """CreateSession is idempotent on session_id, refuses a different phone, and a full node."""

    async def test_idempotent_and_already_exists(self, node: RunningNode) -> None:
        first = await _create(node.stub, "ws-1", "s-1")
        again = await _create(node.stub, "ws-1", "s-1")
        assert again.create_time == first.create_time
        error = await _error(
            node.stub.CreateSession(
                pb.CreateSessionRequest(
                    workspace_id="ws-1", session_id="s-1", phone_number="+14155550111"
                )
            )
        )
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "another phone number" in (error.details() or "")

    async def test_concurrent_creates_make_one_session(self, node: RunningNode) -> None:
        created = await asyncio.gather(*(_create(node.stub, "ws-1", "s-1") for _ in range(10)))
        assert len({session.create_time.ToNanoseconds() for session in created}) == 1
        assert node.server.manager.hosted_count == 1

    async def test_resource_exhausted_at_max_sessions(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(tmp_path, etcd_url, cluster_name, simnet, max_sessions=2) as node:
            await _create(node.stub, "ws-1", "s-1")
            await _create(node.stub, "ws-2", "s-2")
            error = await _error(_create(node.stub, "ws-1", "s-3"))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await _create(node.stub, "ws-1", "s-1")  # the existing one is still returned
            assert not (node.storage / "workspace_ws-1" / "s-3").exists()


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("GetSession", pb.GetSessionRequest(workspace_id="../etc", session_id="s-1"), "workspace_id"),
    ("GetSession", pb.GetSessionRequest(workspace_id="ws-1", session_id="a/b"), "session_id"),
    ("GetSession", pb.GetSessionRequest(workspace_id="", session_id="s-1"), "workspace_id"),
    ("CreateSession", pb.CreateSessionRequest(workspace_id="ws-1", session_id=".."), "session_id"),
    (
        "CreateSession",
        pb.CreateSessionRequest(workspace_id="x" * 65, session_id="s"),
        "workspace_id",
    ),
    ("CreateSession", pb.CreateSessionRequest(workspace_id="wš", session_id="s-1"), "workspace_id"),
    (
        "CreateSession",
        pb.CreateSessionRequest(workspace_id="ws-1", session_id="s-1", phone_number="call me"),
        "phone_number",
    ),
    (
        "CreateSession",
        pb.CreateSessionRequest(workspace_id="ws-1", session_id="s-1", labels={"k": "v" * 300}),
        "label",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            workspace_id="ws-1", session_id="s-1", client_message_id="m-1", to="+1", text="x" * 4097
        ),
        "text",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            workspace_id="ws-1", session_id="s-1", client_message_id="m-1", to="", text="hi"
        ),
        "to",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            workspace_id="ws-1", session_id="s-1", client_message_id="../m", to="+1", text="hi"
        ),
        "client_message_id",
    ),
    ("ListSessions", pb.ListSessionsRequest(workspace_id="ws-1", page_token="!!not"), "page_token"),
    ("ListSessions", pb.ListSessionsRequest(workspace_id="ws-1", page_size=-1), "page_size"),
    (
        "DeleteSession",
        pb.DeleteSessionRequest(workspace_id="ws-1", session_id="s-1", reason="r" * 65),
        "reason",
    ),
    ("GetQrCode", pb.GetQrCodeRequest(workspace_id="ws 1", session_id="s-1"), "workspace_id"),
]


class TestValidation:
    """Bad input is INVALID_ARGUMENT naming the problem, writing nothing; unknown is NOT_FOUND."""

    async def test_each_bad_input(self, node: RunningNode) -> None:
        for method, request, named in BAD_REQUESTS:
            error = await _error(getattr(node.stub, method)(request, timeout=5))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request)
            assert named in (error.details() or ""), (method, error.details())
        stream = node.stub.WatchSession(pb.WatchSessionRequest(workspace_id="ws-1", session_id="/"))
        error = await _error(stream.read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _files_under(node.storage) == []

    async def test_unknown_session_is_not_found(self, node: RunningNode) -> None:
        key = {"workspace_id": "ws-1", "session_id": "nobody"}
        calls = [
            node.stub.GetSession(pb.GetSessionRequest(**key)),
            node.stub.GetQrCode(pb.GetQrCodeRequest(**key)),
            node.stub.SendMessage(
                pb.SendMessageRequest(**key, client_message_id="m-1", to="+1", text="hi")
            ),
            node.stub.WatchSession(pb.WatchSessionRequest(**key)).read(),
        ]
        for call in calls:
            error = await _error(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "ws-1/nobody" in (error.details() or "")
        assert _files_under(node.storage) == []


class TestSendMessage:
    """SendMessage is on disk when acknowledged and idempotent on client_message_id."""

    async def test_duplicate_sends_deliver_once(self, node: RunningNode, simnet: SimNet) -> None:
        await _create(node.stub, "ws-1", "s-1")
        await _wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
        request = pb.SendMessageRequest(
            workspace_id="ws-1", session_id="s-1", client_message_id="m-1", to="+1999", text="hi"
        )
        first = await node.stub.SendMessage(request)
        assert not first.duplicate and first.status == pb.MESSAGE_STATUS_QUEUED
        assert first.node_id == "node-1"
        stored = node.storage / "workspace_ws-1" / "s-1" / "outbox" / "m-1.json"
        assert json.loads(stored.read_text())["text"] == "hi"  # acknowledged means on disk
        replays = await asyncio.gather(*(node.stub.SendMessage(request) for _ in range(5)))
        assert all(r.duplicate and r.accept_time == first.accept_time for r in replays)

        await eventually(lambda: simnet.delivered_ids("ws-1/s-1")["m-1"] == 1)
        await eventually(lambda: json.loads(stored.read_text())["status"] != "QUEUED")
        assert simnet.delivered_ids("ws-1/s-1")["m-1"] == 1
        assert simnet.resend_count == 0  # the node itself handed it over once

    async def test_watch_sees_the_ack(self, node: RunningNode) -> None:
        await _create(node.stub, "ws-1", "s-1")
        await _wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
        stream = node.stub.WatchSession(
            pb.WatchSessionRequest(workspace_id="ws-1", session_id="s-1")
        )
        assert (await stream.read()).HasField("snapshot")
        await node.stub.SendMessage(
            pb.SendMessageRequest(
                workspace_id="ws-1", session_id="s-1", client_message_id="m-7", to="+1", text="yo"
            )
        )
        async with asyncio.timeout(10):
            while not (event := await stream.read()).HasField("message_ack"):
                pass
        assert event.message_ack.client_message_id == "m-7"
        assert event.message_ack.status != pb.MESSAGE_STATUS_QUEUED
        stream.cancel()


class TestListAndDelete:
    """ListSessions pages in session_id order; DeleteSession records why and is idempotent."""

    async def test_paging(self, node: RunningNode) -> None:
        for sid in ["s-5", "s-2", "s-4", "s-1", "s-3"]:
            await _create(node.stub, "ws-1", sid)
        await _create(node.stub, "ws-2", "s-0")
        seen: list[list[str]] = []
        token = ""
        while True:
            page = await node.stub.ListSessions(
                pb.ListSessionsRequest(workspace_id="ws-1", page_size=2, page_token=token)
            )
            seen.append([session.session_id for session in page.sessions])
            token = page.next_page_token
            if not token:
                break
        assert seen == [["s-1", "s-2"], ["s-3", "s-4"], ["s-5"]]
        everything = await node.stub.ListSessions(pb.ListSessionsRequest(workspace_id="ws-1"))
        assert len(everything.sessions) == 5 and not everything.next_page_token

    async def test_delete_records_reason_and_is_idempotent(self, node: RunningNode) -> None:
        await _create(node.stub, "ws-1", "s-1")
        await _wait_state(node.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
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

    async def test_delete_unknown_is_stopped_and_writes_nothing(self, node: RunningNode) -> None:
        deleted = await node.stub.DeleteSession(
            pb.DeleteSessionRequest(workspace_id="ws-1", session_id="never")
        )
        assert deleted.state == pb.SESSION_STATE_STOPPED
        assert deleted.disconnect_reason == "user_initiated"
        assert _files_under(node.storage) == []


class TestSlowWatcher:
    """A watcher that stops reading is dropped with UNAVAILABLE; the others go on unharmed."""

    async def test_overflow_drops_only_the_slow_watcher(self) -> None:
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


class TestUnexpectedErrors:
    """A failure nobody planned for is INTERNAL with a generic message; details stay in the log."""

    async def test_internal_error_hides_details(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        def broken_factory(workspace_id: str, session_id: str) -> Driver:
            raise RuntimeError("secret driver detail")

        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet, driver_factory=broken_factory
        ) as node:
            error = await _error(_create(node.stub, "ws-1", "s-1"))
            assert error.code() == grpc.StatusCode.INTERNAL
            assert error.details() == "internal error"
            # The node goes on serving.
            got = await _error(
                node.stub.GetSession(pb.GetSessionRequest(workspace_id="ws-1", session_id="s-9"))
            )
            assert got.code() == grpc.StatusCode.NOT_FOUND


class TestServing:
    """Health says SERVING, reflection lists the service, and another owner gets a redirect."""

    async def test_health_and_reflection(self, node: RunningNode) -> None:
        health = health_pb2_grpc.HealthStub(node.channel)
        for service in ("", SESSION_SERVICE_NAME):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(node.channel)
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
        names = {service.name for service in answer.list_services_response.service}
        assert {SESSION_SERVICE_NAME, "grpc.health.v1.Health"} <= names

    async def test_published_load_follows_hosted_sessions(self, node: RunningNode) -> None:
        def published_load() -> int:
            record = node.server.ring.route("ws-1")
            return record.load if record is not None else -1

        await eventually(lambda: published_load() == 0, message="node registered")
        await _create(node.stub, "ws-1", "s-1")
        await _create(node.stub, "ws-2", "s-2")
        await eventually(lambda: published_load() == 2, message="load 2 in etcd")

    async def test_workspace_of_another_node_is_redirected(
        self, node: RunningNode, etcd_url: str, cluster_name: str
    ) -> None:
        client = await connect_etcd(etcd_url)
        other = NodeRegistration(
            client,
            ClusterKeys(cluster_name),
            NodeRecord(node_id="node-2", address="127.0.0.1:1", capacity=500),
            lease_ttl_seconds=2,
        )
        await other.start()
        try:
            routing = node.server.ring
            await eventually(lambda: {"node-1", "node-2"} <= set(routing.ring.node_ids))

            def owner(workspace_id: str) -> str:
                record = routing.route(workspace_id)
                return record.node_id if record else ""

            theirs = next(f"ws-{i}" for i in range(1000) if owner(f"ws-{i}") == "node-2")
            mine = next(f"ws-{i}" for i in range(1000) if owner(f"ws-{i}") == "node-1")
            error = await _error(_create(node.stub, theirs, "s-1"))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            trailing: dict[str, str] = dict(error.trailing_metadata() or ())  # type: ignore[arg-type]
            assert trailing[OWNER_METADATA_KEY] == "node-2@127.0.0.1:1"
            assert _files_under(node.storage) == []
            await _create(node.stub, mine, "s-1")  # its own workspaces it still serves
        finally:
            await other.stop()
            await client.close()


class TestConfiguration:
    """Flags and environment variables (a contract): flags win; bad values exit with code 2."""

    def test_environment_then_flags(self) -> None:
        environ = {
            "INSTANCE_ID": "from-instance",
            "NODE_LISTEN": "127.0.0.1:0",
            "ETCD_ENDPOINTS": "http://127.0.0.1:1,127.0.0.1:2",
            "SESSIONMESH_CLUSTER": "blue",
            "SESSION_STORAGE_PATH": "/srv/sessions",
            "MAX_SESSIONS_PER_INSTANCE": "7",
            "DATABASE_URL": "",
            "SIMNET_ADDR": "127.0.0.1:9",
            "METRICS_LISTEN": "127.0.0.1:0",
            "LEASE_TTL_SECONDS": "3",
            "NODE_ZONE": "eu-1a",
            "RESTORE_CONCURRENCY": "4",
            "LOG_LEVEL": "debug",
        }
        config = load_config([], environ=environ)
        assert (config.node_id, config.cluster, config.max_sessions) == ("from-instance", "blue", 7)
        assert config.database_url == "" and config.zone == "eu-1a"
        assert (config.lease_ttl_seconds, config.restore_concurrency) == (3, 4)
        assert config.storage_path == Path("/srv/sessions") and config.log_level == "DEBUG"
        flagged = load_config(
            ["--node-id", "n-2", "--max-sessions", "9", "--advertise", "10.0.0.1:7001"],
            environ={**environ, "NODE_ID": "from-node-id"},
        )
        assert (flagged.node_id, flagged.max_sessions) == ("n-2", 9)
        assert flagged.advertise_address == "10.0.0.1:7001"
        assert load_config([], environ={}).listen_address == "127.0.0.1:7001"

    @pytest.mark.parametrize(
        ("flags", "named"),
        [
            (["--listen", "no-port"], "--listen"),
            (["--listen", "127.0.0.1:65536"], "--listen"),
            (["--max-sessions", "0"], "--max-sessions"),
            (["--max-sessions", "many"], "--max-sessions"),
            (["--node-id", "../x"], "--node-id"),
            (["--lease-ttl-seconds", "1"], "--lease-ttl-seconds"),
            (["--etcd", "https://127.0.0.1:2379"], "etcd endpoint"),
        ],
    )
    def test_bad_values_exit_2(
        self, flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exited:
            load_config(flags, environ={})
        assert exited.value.code == 2
        assert named in capsys.readouterr().err
