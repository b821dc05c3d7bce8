"""The accounts store writes beside the call path: batched, coalesced, exact, never raising."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import structlog.testing
from sqlmodel import Session, select

from registry.accounts import AccountStore, MoveHistory, WhatsappAccount, downgrade, upgrade
from registry.accounts.engine import make_engine
from registry.accounts.models import utc_now
from registry.accounts.store import MAX_ROW_ATTEMPTS
from testkit import eventually
from tests.test_migrations import server_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'accounts.db'}"
    upgrade(url)
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AccountStore]:
    # A long interval: tests flush explicitly, so they see exactly one batch at a time.
    accounts = AccountStore(database_url, flush_interval_seconds=60)
    await accounts.start()
    yield accounts
    await accounts.stop()


def read_rows(url: str) -> dict[str, WhatsappAccount]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {row.session_id: row for row in session.exec(select(WhatsappAccount))}
    finally:
        engine.dispose()


def create(store: AccountStore, session_id: str = "s-1", node_id: str = "node-a") -> None:
    store.record_created(
        workspace_id="ws-1",
        session_id=session_id,
        phone_number="+15550001",
        node_id=node_id,
        node_url=f"{node_id}:50051",
        storage_path=f"/data/workspace_ws-1/{session_id}",
    )


def assign(store: AccountStore, node_id: str, session_id: str = "s-1") -> None:
    store.record_assignment(
        workspace_id="ws-1", session_id=session_id, node_id=node_id, node_url=f"{node_id}:50051"
    )


class TestRecording:
    """What each ``record_*`` call leaves in the row."""

    async def test_created_session_gets_a_row(self, store: AccountStore, database_url: str) -> None:
        before = utc_now()
        create(store)
        await store.flush()
        row = read_rows(database_url)["s-1"]
        assert (row.workspace_id, row.phone_number, row.status) == ("ws-1", "+15550001", "starting")
        assert (row.assigned_node_id, row.assigned_node_url) == ("node-a", "node-a:50051")
        assert row.session_storage_path == "/data/workspace_ws-1/s-1"
        assert row.instance_migration_count == 0
        assert row.previous_node_id is None
        assert row.created_at >= before.replace(microsecond=0)

    async def test_same_session_id_in_two_workspaces_keeps_two_rows(
        self, store: AccountStore, database_url: str
    ) -> None:
        for workspace_id, node_id in (("ws-1", "node-a"), ("ws-2", "node-b")):
            store.record_created(
                workspace_id=workspace_id,
                session_id="s-1",
                phone_number="",
                node_id=node_id,
                node_url=f"{node_id}:50051",
                storage_path=f"/data/workspace_{workspace_id}/s-1",
            )
        await store.flush()
        store.record_assignment(
            workspace_id="ws-2", session_id="s-1", node_id="node-c", node_url="node-c:50051"
        )
        await store.flush()
        engine = make_engine(database_url)
        try:
            with Session(engine) as session:
                rows = {
                    row.workspace_id: (row.assigned_node_id, row.instance_migration_count)
                    for row in session.exec(select(WhatsappAccount))
                }
        finally:
            engine.dispose()
        assert rows == {"ws-1": ("node-a", 0), "ws-2": ("node-c", 1)}

    async def test_a_stale_owners_late_write_is_refused(
        self, store: AccountStore, database_url: str
    ) -> None:
        create(store)
        await store.flush()
        # node-b took over under a newer epoch; node-a's late writes (older epoch) arrive after.
        store.record_assignment(
            workspace_id="ws-1", session_id="s-1", node_id="node-b", node_url="b:1", epoch=20
        )
        store.record_status(workspace_id="ws-1", session_id="s-1", status="ready", epoch=20)
        await store.flush()
        store.record_assignment(
            workspace_id="ws-1", session_id="s-1", node_id="node-a", node_url="a:1", epoch=10
        )
        store.record_status(workspace_id="ws-1", session_id="s-1", status="stopped", epoch=10)
        await store.flush()
        row = read_rows(database_url)["s-1"]
        assert (row.assigned_node_id, row.status, row.owner_epoch) == ("node-b", "ready", 20)
        assert row.instance_migration_count == 1
        # The same or a newer epoch is applied.
        store.record_status(workspace_id="ws-1", session_id="s-1", status="disconnected", epoch=20)
        await store.flush()
        assert read_rows(database_url)["s-1"].status == "disconnected"

    async def test_moves_are_counted_exactly(self, store: AccountStore, database_url: str) -> None:
        create(store)
        await store.flush()
        assign(store, "node-b")
        await store.flush()
        assign(store, "node-c")
        await store.flush()
        row = read_rows(database_url)["s-1"]
        assert row.instance_migration_count == 2
        assert (row.previous_node_id, row.assigned_node_id) == ("node-b", "node-c")
        assert row.last_instance_migration_at is not None
        moved_at = row.last_instance_migration_at

        assign(store, "node-c")
        await store.flush()
        row = read_rows(database_url)["s-1"]
        assert row.instance_migration_count == 2
        assert row.previous_node_id == "node-b"
        assert row.last_instance_migration_at == moved_at

    async def test_moves_within_one_batch_are_each_counted(
        self, store: AccountStore, database_url: str
    ) -> None:
        create(store)
        assign(store, "node-b")
        assign(store, "node-b")
        assign(store, "node-c")
        await store.flush()
        row = read_rows(database_url)["s-1"]
        assert row.instance_migration_count == 2
        assert (row.previous_node_id, row.assigned_node_id) == ("node-b", "node-c")

    async def test_status_disconnect_and_storage(
        self, store: AccountStore, database_url: str
    ) -> None:
        create(store)
        store.record_status(workspace_id="ws-1", session_id="s-1", status="ready")
        store.record_disconnect(
            workspace_id="ws-1", session_id="s-1", reason="connection_replaced", details="kicked"
        )
        store.record_storage(workspace_id="ws-1", session_id="s-1", size_bytes=12_345_678_901)
        await store.flush()
        row = read_rows(database_url)["s-1"]
        assert row.status == "ready"
        assert (row.disconnect_reason, row.disconnect_details) == ("connection_replaced", "kicked")
        assert row.disconnected_at is not None
        assert row.session_file_size_bytes == 12_345_678_901
        assert row.session_storage_verified_at is not None

    async def test_activity_is_coalesced_per_session(
        self, store: AccountStore, database_url: str
    ) -> None:
        create(store)
        for _ in range(100):
            store.record_activity(workspace_id="ws-1", session_id="s-1")
        store.record_activity(workspace_id="ws-1", session_id="s-2")
        assert store.pending_count == 2
        last_call = utc_now()
        await store.flush()
        assert store.pending_count == 0
        rows = read_rows(database_url)
        assert rows["s-1"].last_activity_at is not None
        assert rows["s-1"].last_activity_at <= last_call
        # An unknown session still gets a row, so no activity is lost.
        assert rows["s-2"].workspace_id == "ws-1"
        assert rows["s-2"].last_activity_at is not None


class TestWriting:
    """When and how the queue reaches the database."""

    async def test_stop_writes_what_is_queued(self, sqlite_url: str) -> None:
        store = AccountStore(sqlite_url, flush_interval_seconds=60)
        await store.start()
        create(store)
        await store.stop()
        assert set(read_rows(sqlite_url)) == {"s-1"}

    async def test_background_task_flushes_on_its_own(self, sqlite_url: str) -> None:
        store = AccountStore(sqlite_url, flush_interval_seconds=0.05)
        await store.start()
        try:
            create(store)
            await eventually(lambda: "s-1" in read_rows(sqlite_url), message="periodic flush")
        finally:
            await store.stop()

    async def test_failed_write_is_logged_and_retried(self, sqlite_url: str) -> None:
        store = AccountStore(sqlite_url, flush_interval_seconds=60)
        await store.start()
        try:
            create(store)
            assign(store, "node-b")
            downgrade(sqlite_url, "base")
            with structlog.testing.capture_logs() as events:
                await store.flush()
            assert "accounts_unavailable" in [event["event"] for event in events], events
            assert store.pending_count == 1
            assign(store, "node-c")
            upgrade(sqlite_url)
            await store.flush()
            assert store.pending_count == 0
            row = read_rows(sqlite_url)["s-1"]
            assert (row.instance_migration_count, row.assigned_node_id) == (2, "node-c")
        finally:
            await store.stop()

    async def test_a_schema_behind_head_holds_the_writes_until_upgraded(
        self, tmp_path: Path
    ) -> None:
        url = f"sqlite:///{tmp_path / 'old.db'}"
        upgrade(url, "0001")
        store = AccountStore(url, flush_interval_seconds=60)
        with structlog.testing.capture_logs() as events:
            await store.start()  # starts all the same: the DB is beside the call path
            create(store)
            await store.flush()
        unavailable = [event for event in events if event["event"] == "accounts_unavailable"]
        assert unavailable and "sessionmesh-db upgrade" in str(unavailable[-1]["error"])
        assert store.pending_count == 1
        upgrade(url)
        await store.flush()
        await store.stop()
        assert set(read_rows(url)) == {"s-1"}


class Drops:
    """What a store told ``on_changes_dropped``, by reason."""

    def __init__(self) -> None:
        self.by_reason: dict[str, int] = {}

    def __call__(self, reason: str, count: int) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + count


class TestABadRowIsIsolated:
    """A row the database refuses does not hold the others back: the batch is split until it
    fails alone, it is retried a few times, then dropped, logged and counted."""

    async def test_the_other_rows_land_and_later_batches_too(self, database_url: str) -> None:
        drops = Drops()
        store = AccountStore(database_url, flush_interval_seconds=60, on_changes_dropped=drops)
        await store.start()
        try:
            create(store, "s-1")
            create(store, "s-\ud800")  # no driver can encode a lone surrogate: refused
            create(store, "s-3")
            with structlog.testing.capture_logs() as events:
                for _ in range(MAX_ROW_ATTEMPTS):
                    await store.flush()
                    assert {"s-1", "s-3"} <= set(read_rows(database_url))
            refused = [event for event in events if event["event"] == "accounts_row_refused"]
            assert [event["session_id"] for event in refused] == ["s-\ud800"]
            assert drops.by_reason == {"row_refused": 1}
            assert store.pending_count == 0
            create(store, "s-4")
            await store.flush()
            assert set(read_rows(database_url)) == {"s-1", "s-3", "s-4"}
        finally:
            await store.stop()

    async def test_text_the_database_cannot_take_is_stored_cleaned(
        self, store: AccountStore, database_url: str
    ) -> None:
        create(store)
        store.record_disconnect(
            workspace_id="ws-1",
            session_id="s-1",
            reason="r" * 100,
            details="nul\x00 and a lone \ud800 surrogate" + "x" * 5000,
        )
        await store.flush()
        row = read_rows(database_url)["s-1"]
        assert row.disconnect_reason == "r" * 64
        assert row.disconnect_details is not None
        assert row.disconnect_details.startswith("nul and a lone ? surrogate")
        assert len(row.disconnect_details) == 4096


def history(count: int, previous: str = "") -> MoveHistory:
    return MoveHistory(
        count=count, previous_node_id=previous, moved_at=utc_now() if previous else None
    )


class TestMovesCountedFromTheSessionsOwnHistory:
    """A placement that carries the session's own move history sets the move columns to it,
    so each move is counted once whatever order the nodes' rows land in, and whether the rows
    of a node the session only passed through land at all."""

    async def test_rows_landing_out_of_order_count_each_move_once(self, database_url: str) -> None:
        stores = {
            node_id: AccountStore(database_url, flush_interval_seconds=60) for node_id in "abc"
        }
        for each in stores.values():
            await each.start()
        try:
            # Created on a, moved to b, then to c, while none of them could write.
            stores["a"].record_created(
                workspace_id="ws-1", session_id="s-1", phone_number="+15550001",
                node_id="node-a", node_url="a:1", storage_path="/data/s-1", epoch=10,
                history=history(0),
            )  # fmt: skip
            for node_id, epoch, count, previous in (("b", 20, 1, "node-a"), ("c", 30, 2, "node-b")):
                stores[node_id].record_assignment(
                    workspace_id="ws-1", session_id="s-1", node_id=f"node-{node_id}",
                    node_url=f"{node_id}:1", epoch=epoch, history=history(count, previous),
                    phone_number="+15550001", storage_path="/data/s-1",
                )  # fmt: skip
            for node_id in "cab":  # the newest owner's rows first, a node in between last
                await stores[node_id].flush()
            row = read_rows(database_url)["s-1"]
            assert (row.assigned_node_id, row.previous_node_id) == ("node-c", "node-b")
            assert row.instance_migration_count == 2
            assert (row.phone_number, row.session_storage_path) == ("+15550001", "/data/s-1")
            assert row.last_instance_migration_at is not None
        finally:
            for each in stores.values():
                await each.stop()

    async def test_a_history_coalesced_with_later_moves_keeps_every_move(
        self, store: AccountStore, database_url: str
    ) -> None:
        create(store)
        await store.flush()
        store.record_assignment(
            workspace_id="ws-1", session_id="s-1", node_id="node-b", node_url="b:1",
            history=history(1, "node-a"),
        )  # fmt: skip
        assign(store, "node-c")  # a placement without history, coalesced after it
        assign(store, "node-a")
        await store.flush()
        row = read_rows(database_url)["s-1"]
        assert (row.instance_migration_count, row.previous_node_id) == (3, "node-c")
        assert row.assigned_node_id == "node-a"


def _waiting_for_a_lock(url: str) -> bool:
    """Whether some transaction on the server waits for a row lock now."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if url.startswith("postgresql"):
                query = (
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            else:
                # MariaDB lists a transaction waiting for its first lock nowhere but here.
                query = (
                    "SELECT count(*) FROM information_schema.processlist "
                    "WHERE info LIKE '%%FOR UPDATE' AND time_ms > 200"
                )
            return bool(connection.exec_driver_sql(query).scalar())
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
async def test_a_batch_chosen_as_a_deadlocks_victim_is_written_by_the_same_flush(
    backend: str,
) -> None:
    # Two writers of the same rows (a handoff's old and new owner) can deadlock; the database
    # then rolls one of them back, and that one must try again rather than wait for its backoff.
    for url in server_database(backend):
        upgrade(url)
        store = AccountStore(url, flush_interval_seconds=60)
        await store.start()
        other_engine = make_engine(url)
        try:
            for number in range(1, 21):
                create(store, f"s-{number}")
            await store.flush()
            with other_engine.connect() as other:
                transaction = other.begin()
                # The other writer changes s-2 and many more first: it has more to lose, so
                # MariaDB rolls the store back; PostgreSQL rolls back whoever waited first,
                # the store too.
                other.exec_driver_sql(
                    "UPDATE whatsapp_accounts SET status = 'other' WHERE session_id <> 's-1'"
                )
                for session_id in ("s-1", "s-2"):
                    store.record_status(workspace_id="ws-1", session_id=session_id, status="ready")
                with structlog.testing.capture_logs() as logs:
                    flushing = asyncio.create_task(store.flush())
                    # The store holds s-1 and waits for s-2; now the other asks for s-1.
                    await eventually(partial(_waiting_for_a_lock, url), message="store waits")
                    await asyncio.to_thread(
                        other.exec_driver_sql,
                        "SELECT status FROM whatsapp_accounts WHERE session_id = 's-1' FOR UPDATE",
                    )
                    transaction.commit()
                    async with asyncio.timeout(30):
                        await flushing
            assert any(each["event"] == "accounts_lock_conflict_retried" for each in logs)
            rows = read_rows(url)
            assert (rows["s-1"].status, rows["s-2"].status) == ("ready", "ready")
            assert store.pending_count == 0
        finally:
            other_engine.dispose()
            await store.stop()
