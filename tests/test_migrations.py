"""The accounts schema upgrades and downgrades cleanly on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from registry.accounts import WhatsappAccount, current, downgrade, head_revision, upgrade
from registry.accounts.__main__ import main
from registry.accounts.engine import make_engine

TABLE = "whatsapp_accounts"
FIRST_COLUMNS = {
    "id",
    "workspace_id",
    "session_id",
    "phone_number",
    "status",
    "assigned_node_id",
    "assigned_node_url",
    "previous_node_id",
    "disconnected_at",
    "disconnect_reason",
    "disconnect_details",
    "last_activity_at",
    "created_at",
    "updated_at",
}
SECOND_COLUMNS = {
    "session_storage_path",
    "session_file_size_bytes",
    "session_storage_verified_at",
    "instance_migration_count",
    "last_instance_migration_at",
}
INDEXES = {
    "ix_whatsapp_accounts_workspace_id",
    "ix_whatsapp_accounts_assigned_node_id",
    "ix_whatsapp_accounts_disconnect",
}

SERVERS = {
    "postgres": ("postgresql+psycopg://postgres@127.0.0.1:5432", "postgres"),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306", "test"),
}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nested' / 'accounts.db'}"


def server_database(kind: str) -> Iterator[str]:
    """A freshly created database with a random name on a real server, dropped afterwards."""
    base, admin_database = SERVERS[kind]
    admin = sa.create_engine(f"{base}/{admin_database}", isolation_level="AUTOCOMMIT")
    name = f"mesh_{secrets.token_hex(6)}"
    try:
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        except sa.exc.OperationalError as error:
            pytest.skip(f"{kind} is not reachable at {base}: {error.orig}")
        yield f"{base}/{name}"
        with admin.connect() as connection:
            force = " WITH (FORCE)" if kind == "postgres" else ""
            connection.exec_driver_sql(f"DROP DATABASE {name}{force}")
    finally:
        admin.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url
    else:
        yield from server_database(request.param)


def inspect_table(url: str) -> tuple[set[str], set[str]]:
    """(columns, index names) of the accounts table; both empty if it does not exist."""
    engine = make_engine(url)
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(TABLE):
            return set(), set()
        columns = {column["name"] for column in inspector.get_columns(TABLE)}
        indexes = {str(index["name"]) for index in inspector.get_indexes(TABLE)}
        return columns, indexes
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[object]:
    """What autogenerate would change to make the database match the model (empty = same)."""
    metadata = sa.MetaData()
    WhatsappAccount.__table__.to_metadata(metadata)  # type: ignore[attr-defined]
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return [
                difference
                for difference in compare_metadata(context, metadata)
                if not (difference[0] == "remove_table" and difference[1].name == "alembic_version")
            ]
    finally:
        engine.dispose()


def session_unique_keys(database_url: str) -> list[list[str]]:
    """The columns of each unique key (constraint or unique index) on whatsapp_accounts."""
    engine = make_engine(database_url)
    try:
        inspector = sa.inspect(engine)
        keys = [
            list(c["column_names"]) for c in inspector.get_unique_constraints("whatsapp_accounts")
        ]
        for index in inspector.get_indexes("whatsapp_accounts"):
            columns = [str(name) for name in index["column_names"]]
            if index.get("unique") and columns not in keys:
                keys.append(columns)
        return sorted(keys)
    finally:
        engine.dispose()


class TestMigrations:
    """Each revision adds and removes exactly its columns, and the model matches head."""

    def test_upgrade_downgrade_upgrade(self, database_url: str) -> None:
        assert current(database_url) is None
        upgrade(database_url)
        assert current(database_url) == head_revision() == "0004"
        columns, indexes = inspect_table(database_url)
        assert columns == FIRST_COLUMNS | SECOND_COLUMNS | {"owner_epoch"}
        assert indexes >= INDEXES
        assert session_unique_keys(database_url) == [["workspace_id", "session_id"]]

        downgrade(database_url, "0003")
        assert inspect_table(database_url)[0] == FIRST_COLUMNS | SECOND_COLUMNS

        downgrade(database_url, "0002")
        assert current(database_url) == "0002"
        assert session_unique_keys(database_url) == [["session_id"]]

        downgrade(database_url, "0001")
        assert current(database_url) == "0001"
        columns, indexes = inspect_table(database_url)
        assert columns == FIRST_COLUMNS
        assert indexes >= INDEXES

        downgrade(database_url, "base")
        assert current(database_url) is None
        assert inspect_table(database_url) == (set(), set())

        upgrade(database_url)
        assert inspect_table(database_url)[0] == FIRST_COLUMNS | SECOND_COLUMNS | {"owner_epoch"}

    def test_two_workspaces_may_share_a_session_id(self, database_url: str) -> None:
        upgrade(database_url)
        engine = make_engine(database_url)
        try:
            with engine.begin() as connection:
                for workspace_id in ("ws-1", "ws-2"):
                    connection.execute(
                        sa.text(
                            "INSERT INTO whatsapp_accounts (workspace_id, session_id, status,"
                            " instance_migration_count, created_at, updated_at)"
                            " VALUES (:ws, 's-1', 'ready', 0, :now, :now)"
                        ),
                        {"ws": workspace_id, "now": datetime(2024, 1, 1)},
                    )
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
                connection.execute(
                    sa.text(
                        "INSERT INTO whatsapp_accounts (workspace_id, session_id, status,"
                        " instance_migration_count, created_at, updated_at)"
                        " VALUES ('ws-1', 's-1', 'ready', 0, :now, :now)"
                    ),
                    {"now": datetime(2024, 1, 1)},
                )
        finally:
            engine.dispose()

    def test_model_matches_the_migrated_schema(self, database_url: str) -> None:
        upgrade(database_url)
        assert schema_differences(database_url) == []

    def test_rows_survive_the_second_revision(self, database_url: str) -> None:
        upgrade(database_url, "0001")
        engine = make_engine(database_url)
        try:
            with engine.begin() as connection:
                connection.execute(
                    sa.text(
                        "INSERT INTO whatsapp_accounts (workspace_id, session_id, status,"
                        " created_at, updated_at) VALUES ('ws-1', 's-1', 'ready', :now, :now)"
                    ),
                    {"now": datetime(2024, 1, 1)},
                )
            upgrade(database_url)
            with engine.connect() as connection:
                row = connection.execute(
                    sa.text("SELECT session_id, instance_migration_count FROM whatsapp_accounts")
                ).one()
            assert tuple(row) == ("s-1", 0)
            downgrade(database_url, "0001")
            with engine.connect() as connection:
                count = connection.execute(sa.text("SELECT COUNT(*) FROM whatsapp_accounts"))
                assert count.scalar() == 1
        finally:
            engine.dispose()


class TestSqliteEngine:
    """SQLite is shared by every local process, so it runs in WAL with a busy timeout."""

    def test_wal_and_busy_timeout(self, sqlite_url: str) -> None:
        engine = make_engine(sqlite_url)
        try:
            with engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        finally:
            engine.dispose()


class TestCommandLine:
    """``sessionmesh-db`` migrates and reports the revision."""

    def test_upgrade_current_downgrade(
        self, sqlite_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["--database-url", sqlite_url, "current"]) == 0
        assert capsys.readouterr().out.strip() == "none"
        assert main(["--database-url", sqlite_url, "upgrade"]) == 0
        assert capsys.readouterr().out.strip() == "0004"
        assert main(["--database-url", sqlite_url, "downgrade", "0001"]) == 0
        assert capsys.readouterr().out.strip() == "0001"
        assert inspect_table(sqlite_url)[0] == FIRST_COLUMNS

    def test_database_url_from_environment(
        self, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", sqlite_url)
        assert main(["upgrade", "0001"]) == 0
        assert capsys.readouterr().out.strip() == "0001"
        assert current(sqlite_url) == "0001"

    def test_unreachable_database_fails_cleanly(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/x", "current"]) == 1
        assert "sessionmesh-db:" in capsys.readouterr().err
