"""The SQLAlchemy engine of the accounts database, set up for its backend.

On one machine every process shares one SQLite file, so SQLite runs in WAL mode with a busy
timeout and takes the write lock when a transaction begins (a deferred transaction that
upgrades to a writer fails at once instead of waiting). Server databases get ``pool_pre_ping``
so a restarted server costs no failed flush.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url

DEFAULT_DATABASE_URL = "sqlite:///.mesh/accounts.db"
SQLITE_BUSY_TIMEOUT_MILLIS = 5000


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level: SQLAlchemy's "begin" hook below issues BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MILLIS}")
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(database_url: str) -> Engine:
    """An engine for ``database_url`` (SQLite file, PostgreSQL or MySQL/MariaDB)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_immediate)
    return engine
