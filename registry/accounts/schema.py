"""Upgrade, downgrade and inspect the accounts schema with Alembic, configured in code.

The migration scripts live inside the package (``migrations/``), so no ``alembic.ini`` is
needed wherever sessionmesh is installed.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from registry.accounts.engine import make_engine

MIGRATIONS_PATH = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config for ``database_url`` using the package's migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_PATH))
    # ConfigParser interpolation treats % specially (URL-encoded passwords).
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision the scripts know."""
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError(f"no migrations under {MIGRATIONS_PATH}")
    return head


def _run(database_url: str, action: str, revision: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest)."""
    _run(database_url, "upgrade", revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` removes the table)."""
    _run(database_url, "downgrade", revision)


def current_revision(connection: Connection) -> str | None:
    """The revision of the database behind ``connection`` (None if never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def current(database_url: str) -> str | None:
    """The revision the database is at (None if never migrated)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return current_revision(connection)
    finally:
        engine.dispose()
