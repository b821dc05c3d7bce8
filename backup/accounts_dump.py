"""The accounts DB as a backup holds it: a logical dump of ``whatsapp_accounts`` (one JSON
object per row, read in one statement, so one consistent moment on SQLite, PostgreSQL and
MariaDB alike) and the schema revision it was read at. A restore brings the schema to the
current revision and replaces the rows (all, or those of some workspaces) in one
transaction, with each row's owner epoch cleared like the sessions' (:mod:`backup.restore`).
The same dump restores into any of the three databases."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from registry import InvalidInput, Unavailable
from registry.accounts import WhatsappAccount, current, make_engine, upgrade

_TABLE = WhatsappAccount.__table__  # type: ignore[attr-defined]  # SQLModel's table


def _encoded(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def dump_accounts(database_url: str) -> tuple[bytes, str, int]:
    """The rows as JSON lines, the schema revision, and the row count (blocking: run it in a
    thread). ``Unavailable`` when the database cannot be read."""
    engine = make_engine(database_url)
    try:
        revision = current(database_url) or ""
        with engine.connect() as connection:
            rows = connection.execute(select(_TABLE).order_by(_TABLE.c.id)).mappings().all()
    except SQLAlchemyError as error:
        raise Unavailable(
            f"cannot read the accounts DB: {error.__class__.__name__}: {error}"
        ) from None
    finally:
        engine.dispose()
    lines = [
        json.dumps({key: _encoded(value) for key, value in row.items()}, sort_keys=True)
        for row in rows
    ]
    return ("\n".join(lines) + "\n" if lines else "").encode(), revision, len(lines)


def parse_accounts(data: bytes) -> list[dict[str, Any]]:
    """The rows of an archive's dump, typed for insertion; ``InvalidInput`` if damaged."""
    columns = {column.name: column for column in _TABLE.columns}
    rows: list[dict[str, Any]] = []
    try:
        for line in data.decode().splitlines():
            raw = json.loads(line)
            if not isinstance(raw, dict) or not set(raw) <= set(columns):
                raise ValueError(f"unknown columns {sorted(set(raw) - set(columns))}")
            rows.append(
                {
                    name: (
                        datetime.fromisoformat(value)
                        if value is not None and isinstance(columns[name].type, DateTime)
                        else value
                    )
                    for name, value in raw.items()
                }
            )
    except (ValueError, TypeError, UnicodeError) as error:
        raise InvalidInput(f"the archive's accounts dump is damaged: {error}") from None
    return rows


def restore_accounts(
    database_url: str, rows: Iterable[dict[str, Any]], *, workspaces: set[str] | None = None
) -> int:
    """Upgrade the schema, then replace the rows (of ``workspaces`` only, if given) with
    ``rows`` in one transaction; how many were written (blocking: run it in a thread)."""
    chosen = [
        {**row, "owner_epoch": 0}
        for row in rows
        if workspaces is None or row.get("workspace_id") in workspaces
    ]
    try:
        upgrade(database_url)
        engine = make_engine(database_url)
        try:
            with engine.begin() as connection:
                if workspaces is None:
                    connection.execute(delete(_TABLE))
                else:
                    connection.execute(delete(_TABLE).where(_TABLE.c.workspace_id.in_(workspaces)))
                    # Ids of other rows may have been taken since: the restored rows get new ones.
                    chosen = [{k: v for k, v in row.items() if k != "id"} for row in chosen]
                if chosen:
                    connection.execute(insert(_TABLE), chosen)
        finally:
            engine.dispose()
    except SQLAlchemyError as error:
        raise Unavailable(
            f"cannot restore the accounts DB: {error.__class__.__name__}: {error}"
        ) from None
    return len(chosen)
