"""The proxyless client resolves each workspace's owner from watch-fed views and calls that
node directly: same answers as the gateway, no etcd read per call, retries across a stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.proxyless import ProxylessClient
from protos import session_pb2 as pb
from registry import slot_of
from testkit import InProcessMesh, eventually, running_inprocess_mesh
from tests.probes import etcd_range_count

WORKSPACES = [f"pxws-{index}" for index in range(6)]
SESSIONS = [(ws, f"s-{ws}") for ws in WORKSPACES]
CALLS_WITHOUT_READS = 50


@pytest.fixture
async def mesh(tmp_path: Path, etcd_url: str, cluster_name: str) -> AsyncIterator[InProcessMesh]:
    """A two-node mesh with one session per workspace, each READY on its slot's owner."""
    async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as running:
        async with running.stub() as stub:
            for ws, sid in SESSIONS:
                await stub.CreateSession(
                    pb.CreateSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                )
        await running.wait_ready(SESSIONS)
        await running.wait_placed(WORKSPACES)
        yield running


@pytest.fixture
async def client(mesh: InProcessMesh) -> AsyncIterator[ProxylessClient]:
    """A proxyless client of the mesh's cluster."""
    async with await ProxylessClient.connect(
        etcd_endpoints=mesh.etcd_url, cluster=mesh.cluster
    ) as proxyless:
        yield proxyless


class TestSameAnswersAsTheGateway:
    """Unary calls answer what the gateway answers, from the slot's owner."""

    async def test_create_get_send_list_delete(
        self, mesh: InProcessMesh, client: ProxylessClient
    ) -> None:
        ws = WORKSPACES[0]
        owner = mesh.owners()[slot_of(ws)]
        assert client.route(ws).node_id == owner
        created = await client.CreateSession(
            pb.CreateSessionRequest(workspace_id=ws, session_id="extra"), timeout=10
        )
        assert created.node_id == owner
        await mesh.wait_ready([(ws, "extra")])
        async with mesh.stub() as gateway:
            for sid in ("extra", f"s-{ws}"):
                request = pb.GetSessionRequest(workspace_id=ws, session_id=sid)
                got = await client.GetSession(request, timeout=10)
                assert got == await gateway.GetSession(request, timeout=10)
                assert got.node_id == owner
            listing = pb.ListSessionsRequest(workspace_id=ws)
            listed = await client.ListSessions(listing, timeout=10)
            assert listed == await gateway.ListSessions(listing, timeout=10)
            assert sorted(s.session_id for s in listed.sessions) == ["extra", f"s-{ws}"]
            sent = await client.SendMessage(
                pb.SendMessageRequest(
                    workspace_id=ws, session_id="extra", client_message_id="m1", to="+1", text="hi"
                ),
                timeout=10,
            )
            assert sent.node_id == owner and not sent.duplicate
            deleted = await client.DeleteSession(
                pb.DeleteSessionRequest(workspace_id=ws, session_id="extra"), timeout=10
            )
            assert deleted.node_id == owner
            listed_after = await client.ListSessions(listing, timeout=10)
            assert listed_after == await gateway.ListSessions(listing, timeout=10)
            assert [s.session_id for s in listed_after.sessions] == [f"s-{ws}"]

    async def test_calls_land_on_both_owners(
        self, mesh: InProcessMesh, client: ProxylessClient
    ) -> None:
        owners = mesh.owners()
        answered = {
            ws: (
                await client.GetSession(
                    pb.GetSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                )
            ).node_id
            for ws, sid in SESSIONS
        }
        assert answered == {ws: owners[slot_of(ws)] for ws in WORKSPACES}
        assert set(answered.values()) == {"node-1", "node-2"}


class TestNoEtcdReadPerCall:
    """Routing is dict lookups on watch-fed views, never an etcd Range."""

    async def test_fifty_calls_read_nothing(
        self, mesh: InProcessMesh, client: ProxylessClient
    ) -> None:
        ws, sid = SESSIONS[0]
        request = pb.GetSessionRequest(workspace_id=ws, session_id=sid)
        reads_before = await etcd_range_count(mesh.etcd_url)
        answers = {
            (await client.GetSession(request, timeout=10)).node_id
            for _ in range(CALLS_WITHOUT_READS)
        }
        reads_after = await etcd_range_count(mesh.etcd_url)
        assert answers == {mesh.owners()[slot_of(ws)]}
        assert reads_after == reads_before, "the client read etcd during calls"


class TestGracefulStop:
    """A node stopping while the client calls fails no call: it retries within the deadline."""

    async def test_no_call_fails(self, mesh: InProcessMesh, client: ProxylessClient) -> None:
        stopping = "node-1"
        assert stopping in {mesh.owners()[slot_of(ws)] for ws in WORKSPACES}
        failures: list[BaseException] = []
        answered_by: set[str] = set()
        calls = 0
        stop = asyncio.Event()

        async def load() -> None:
            nonlocal calls
            while not stop.is_set():
                for ws, sid in SESSIONS:
                    try:
                        got = await client.GetSession(
                            pb.GetSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                        )
                        answered_by.add(got.node_id)
                    except Exception as error:  # any failure is the finding
                        failures.append(error)
                    calls += 1

        task = asyncio.create_task(load())
        try:
            await eventually(lambda: stopping in answered_by, message="calls served by node-1")
            await mesh.stop_node(stopping)
            await mesh.wait_placed(WORKSPACES)
            await mesh.wait_ready(SESSIONS)
            calls_after_stop = calls
            # Keep calling until every workspace has been served by the survivor twice.
            await eventually(
                lambda: calls >= calls_after_stop + len(SESSIONS) * 2,
                timeout_seconds=10,
                message="calls after the stop",
            )
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert failures == []
        assert answered_by == {"node-1", "node-2"}
        assert {client.route(ws).node_id for ws in WORKSPACES} == {"node-2"}


class TestWatchSession:
    """WatchSession streams from the owner, a snapshot first."""

    async def test_snapshot_first(self, mesh: InProcessMesh, client: ProxylessClient) -> None:
        ws, sid = SESSIONS[1]
        stream = client.WatchSession(
            pb.WatchSessionRequest(workspace_id=ws, session_id=sid), timeout=10
        )
        first = await anext(aiter(stream))
        await stream.aclose()  # type: ignore[attr-defined]
        assert first.workspace_id == ws and first.session_id == sid
        assert first.WhichOneof("event") == "snapshot"
        assert first.snapshot.node_id == mesh.owners()[slot_of(ws)]
