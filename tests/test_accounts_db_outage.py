"""The accounts DB is beside the call path, also when it is down: a node starts, serves and
moves slots while its database refuses connections or blackholes them, and the rows catch up
to the exact counts when it returns. Bad text never reaches it.

The faults are real: a TCP proxy (``testkit.TcpProxy``) in front of a real PostgreSQL or
MariaDB refuses or blackholes the connections; for SQLite, a file stands where the database's
folder should be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
import structlog.testing
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from protos import session_pb2 as pb
from registry.accounts import AccountStore, WhatsappAccount
from simnet import SimNet
from testkit import TcpProxy, eventually, running_inprocess_mesh, running_node, running_tcp_proxy
from tests.calls import create, error_of, wait_state
from tests.test_accounts_store import Drops, read_rows
from tests.test_accounts_store import create as record_created
from tests.test_migrations import server_database

SERVERS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]
WORKSPACES = [f"ws-{index}" for index in range(12)]
SESSIONS = [(ws, f"{ws}-s1") for ws in WORKSPACES]
"""Session ids unique across workspaces: ``read_rows`` keys rows by session_id."""


@dataclass
class ProxiedDatabase:
    """A throwaway database on a real server, and a proxy in front of it."""

    direct_url: str
    """The server itself: for the test's own reads."""
    url: str
    """Through the proxy: for the store or node under test."""
    proxy: TcpProxy


@pytest.fixture(params=SERVERS)
async def proxied(request: pytest.FixtureRequest) -> AsyncIterator[ProxiedDatabase]:
    for direct_url in server_database(request.param):  # empty, never migrated
        server = make_url(direct_url)
        assert server.host is not None and server.port is not None
        async with running_tcp_proxy(server.host, server.port) as proxy:
            url = server.set(host="127.0.0.1", port=proxy.port)
            yield ProxiedDatabase(direct_url, url.render_as_string(hide_password=False), proxy)


@pytest.fixture(params=["refuse", "blackhole"])
async def unreachable(request: pytest.FixtureRequest, proxied: ProxiedDatabase) -> ProxiedDatabase:
    """The proxied database, refusing or blackholing every connection."""
    await getattr(proxied.proxy, request.param)()
    return proxied


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from server_database(request.param)


def rows_if_any(url: str) -> dict[str, WhatsappAccount]:
    """The rows by session_id; none while the table does not exist yet (never migrated)."""
    try:
        return read_rows(url)
    except sa.exc.SQLAlchemyError:
        return {}


async def rows_matching(url: str, expected: dict[str, tuple[object, ...]]) -> None:
    """Wait until the rows of ``expected``'s sessions hold (assigned node, status, previous
    node, move count) as given."""

    async def matching() -> bool:
        rows = await asyncio.to_thread(rows_if_any, url)
        found = {
            sid: (
                row.assigned_node_id,
                row.status,
                row.previous_node_id,
                row.instance_migration_count,
            )
            for sid, row in rows.items()
            if sid in expected
        }
        assert found == expected
        return True

    await eventually(matching, timeout_seconds=40, interval_seconds=0.2, message="rows converged")


def dropped(node_id: str, reason: str) -> float:
    """``sessionmesh_node_accounts_changes_dropped`` of one node for one reason, so far."""
    labels = {"node_id": node_id, "reason": reason}
    return REGISTRY.get_sample_value("sessionmesh_node_accounts_changes_dropped_total", labels) or 0


class TestANodeStartsWithoutItsDatabase:
    """A node whose DB is unreachable starts and serves; the schema is migrated and the queued
    rows written once the DB answers."""

    async def test_it_serves_then_the_rows_catch_up(
        self,
        unreachable: ProxiedDatabase,
        tmp_path: Path,
        etcd_url: str,
        cluster_name: str,
        simnet: SimNet,
    ) -> None:
        proxied = unreachable
        flags = ["--database-url", proxied.url]
        async with running_node(tmp_path, etcd_url, cluster_name, simnet, extra_flags=flags) as n:
            for ws, sid in SESSIONS[:3]:
                await create(n.stub, ws, sid)
                await wait_state(n.stub, ws, sid, pb.SESSION_STATE_READY)
            assert rows_if_any(proxied.direct_url) == {}
            await proxied.proxy.resume()
            await rows_matching(
                proxied.direct_url, {sid: ("node-1", "ready", None, 0) for _, sid in SESSIONS[:3]}
            )

    async def test_a_sqlite_path_that_cannot_be_made_yet(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        blocker = tmp_path / "db"
        blocker.write_text("a file where the DB's folder should be")
        url = f"sqlite:///{blocker / 'accounts.db'}"
        flags = ["--database-url", url]
        async with running_node(tmp_path, etcd_url, cluster_name, simnet, extra_flags=flags) as n:
            await create(n.stub, "ws-1", "s-1")
            await wait_state(n.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
            blocker.unlink()
            await rows_matching(url, {"s-1": ("node-1", "ready", None, 0)})


@pytest.mark.slow
class TestSlotsMoveWhileTheDatabaseIsBlackholed:
    """A node joins and leaves again while the DB blackholes every connection: the handoffs
    do not wait for it, and once it answers again every row counts its moves exactly — even
    though the node that came and went never wrote a row."""

    async def test_join_and_leave_then_the_rows_converge(
        self, proxied: ProxiedDatabase, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_inprocess_mesh(
            tmp_path, etcd_url, cluster_name, database_url=proxied.url
        ) as mesh:
            async with mesh.stub() as stub:
                for ws, sid in SESSIONS:
                    await stub.CreateSession(
                        pb.CreateSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                    )
            first = await mesh.wait_ready(SESSIONS)
            await rows_matching(
                proxied.direct_url,
                {key.split("/")[1]: (node_id, "ready", None, 0) for key, node_id in first.items()},
            )

            await proxied.proxy.blackhole()
            dropped_before = dropped("node-3", "unwritten_at_stop")
            await mesh.start_node("node-3")
            await mesh.wait_placed(WORKSPACES, timeout_seconds=15)
            joined = await mesh.wait_ready(SESSIONS)
            moved = {key for key, node_id in joined.items() if node_id != first[key]}
            assert moved and {joined[key] for key in moved} == {"node-3"}
            await mesh.stop_node("node-3")
            await mesh.wait_placed(WORKSPACES, timeout_seconds=15)
            final = await mesh.wait_ready(SESSIONS)
            assert dropped("node-3", "unwritten_at_stop") > dropped_before  # its rows never landed

            await proxied.proxy.resume()
            expected: dict[str, tuple[object, ...]] = {}
            for key, node_id in final.items():
                sid = key.split("/")[1]
                expected[sid] = (
                    (node_id, "ready", "node-3", 2) if key in moved else (node_id, "ready", None, 0)
                )
            await rows_matching(proxied.direct_url, expected)


class TestBadTextNeverReachesTheDatabase:
    """Text no database could store is refused with INVALID_ARGUMENT, changing nothing, and
    the rows written after it land."""

    async def test_a_nul_in_delete_details_is_refused_and_later_rows_land(
        self, server_url: str, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        flags = ["--database-url", server_url]
        async with running_node(tmp_path, etcd_url, cluster_name, simnet, extra_flags=flags) as n:
            await create(n.stub, "ws-1", "s-1")
            await wait_state(n.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)
            refused = await error_of(
                n.stub.DeleteSession(
                    pb.DeleteSessionRequest(
                        workspace_id="ws-1", session_id="s-1", details="a\x00b"
                    ),
                    timeout=5,
                )
            )
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "details" in (refused.details() or "")
            await wait_state(n.stub, "ws-1", "s-1", pb.SESSION_STATE_READY)  # untouched
            await n.stub.DeleteSession(
                pb.DeleteSessionRequest(workspace_id="ws-1", session_id="s-1", details="gone"),
                timeout=5,
            )
            await create(n.stub, "ws-1", "s-2")

            async def landed() -> bool:
                rows = await asyncio.to_thread(rows_if_any, server_url)
                return (
                    "s-2" in rows
                    and rows["s-1"].status == "stopped"
                    and rows["s-1"].disconnect_details == "gone"
                )

            await eventually(landed, timeout_seconds=15, message="the later rows landed")


class TestTheQueueIsBounded:
    """While the DB cannot take them, changes queue up to a bound; past it a change for a
    session with nothing queued is dropped, logged and counted, and queued sessions go on."""

    async def test_past_the_bound_new_sessions_are_dropped_and_counted(
        self, tmp_path: Path
    ) -> None:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the DB's folder should be")
        url = f"sqlite:///{blocker / 'accounts.db'}"
        drops = Drops()
        store = AccountStore(
            url,
            flush_interval_seconds=0.05,
            max_pending_sessions=2,
            upgrade_schema=True,
            on_changes_dropped=drops,
        )
        with structlog.testing.capture_logs() as events:
            await store.start()
            try:
                record_created(store, "s-1")
                record_created(store, "s-2")
                record_created(store, "s-3")  # the queue is full: dropped
                store.record_activity(workspace_id="ws-1", session_id="s-3")  # dropped too
                store.record_status(workspace_id="ws-1", session_id="s-1", status="ready")
                assert store.pending_count == 2
                assert drops.by_reason == {"queue_full": 2}
                await eventually(
                    lambda: any(e["event"] == "accounts_changes_dropped" for e in events),
                    message="the drop logged",
                )
                blocker.unlink()  # the DB's folder can be made now: the store catches up
                await eventually(lambda: store.pending_count == 0, message="queue written")
            finally:
                await store.stop()
        rows = read_rows(url)
        assert set(rows) == {"s-1", "s-2"}
        assert rows["s-1"].status == "ready"
        names = [event["event"] for event in events]
        assert {"accounts_unavailable", "accounts_queue_full", "accounts_available"} <= set(names)

    async def test_a_node_reports_its_queue_and_drops_as_metrics(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        blocker = tmp_path / "db"
        blocker.write_text("a file where the DB's folder should be")
        flags = [
            "--database-url", f"sqlite:///{blocker / 'accounts.db'}",
            "--accounts-max-pending-sessions", "1",
        ]  # fmt: skip
        dropped_before = dropped("node-1", "queue_full")
        async with running_node(tmp_path, etcd_url, cluster_name, simnet, extra_flags=flags) as n:
            await create(n.stub, "ws-1", "s-1")
            await create(n.stub, "ws-1", "s-2")  # its changes find the queue full
            await wait_state(n.stub, "ws-1", "s-2", pb.SESSION_STATE_READY)
            assert dropped("node-1", "queue_full") > dropped_before
            pending = {"node_id": "node-1"}
            assert (
                REGISTRY.get_sample_value("sessionmesh_node_accounts_pending_sessions", pending)
                == 1
            )
