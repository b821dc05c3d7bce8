"""The SQLAlchemy engine of the accounts database, set up for its backend.

On one machine every process shares one SQLite file, so SQLite runs in WAL mode with a busy
timeout and takes the write lock when a transaction begins (a deferred transaction that
upgrades to a writer fails at once instead of waiting). Server databases get ``pool_pre_ping``
so a restarted server costs no failed flush, and bounds on how long a connection may wait: a
connect gives up after ``CONNECT_TIMEOUT_SECONDS``, a dead peer (unacknowledged data, silent
keepalives) is noticed within about ``DEAD_PEER_TIMEOUT_SECONDS``, and with
``statement_timeout_seconds`` no statement waits longer than that for its answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url

DEFAULT_DATABASE_URL = "sqlite:///.mesh/accounts.db"
SQLITE_BUSY_TIMEOUT_MILLIS = 5000
CONNECT_TIMEOUT_SECONDS = 5
"""Whole seconds: libpq takes no fraction (and no less than 2)."""
DEAD_PEER_TIMEOUT_SECONDS = 10
"""PostgreSQL: ``tcp_user_timeout`` and keepalives, so a blackholed server ends the call."""


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


def _server_connect_args(url: URL, statement_timeout_seconds: float | None) -> dict[str, Any]:
    """Driver arguments that bound every wait on a server database (see the module docstring)."""
    if url.get_backend_name() == "postgresql":
        arguments: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "tcp_user_timeout": DEAD_PEER_TIMEOUT_SECONDS * 1000,
            "keepalives": 1,
            "keepalives_idle": DEAD_PEER_TIMEOUT_SECONDS // 2,
            "keepalives_interval": 1,
            "keepalives_count": DEAD_PEER_TIMEOUT_SECONDS // 2,
        }
        if statement_timeout_seconds is not None:
            millis = int(statement_timeout_seconds * 1000)
            arguments["options"] = f"-c statement_timeout={millis} -c lock_timeout={millis}"
        return arguments
    if url.get_backend_name() in ("mysql", "mariadb"):
        arguments = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        if statement_timeout_seconds is not None:
            arguments["read_timeout"] = statement_timeout_seconds
            arguments["write_timeout"] = statement_timeout_seconds
        return arguments
    return {}


def make_engine(database_url: str, *, statement_timeout_seconds: float | None = None) -> Engine:
    """An engine for ``database_url`` (SQLite file, PostgreSQL or MySQL/MariaDB).

    ``statement_timeout_seconds``: no statement on a server database waits longer for its
    answer (None: as long as it takes, for migrations).
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(
            url,
            pool_pre_ping=True,
            connect_args=_server_connect_args(url, statement_timeout_seconds),
        )
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_immediate)
    return engine
