"""The ``whatsapp_accounts`` table: where every session lives, why it disconnected, how often
it moved. The schema itself is owned by the Alembic migrations in ``migrations/versions``;
this model must match what they build (a test compares the two)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Index, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlmodel import Field, SQLModel

from registry.ids import MAX_DETAILS_CHARS

TIMESTAMP = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
"""Naive UTC timestamps; MySQL/MariaDB keep microseconds only when asked to."""

ID_LENGTH = 64
URL_LENGTH = 255
PATH_LENGTH = 1024
PHONE_LENGTH = 32
STATUS_LENGTH = 32
REASON_LENGTH = 64
DETAILS_LENGTH = MAX_DETAILS_CHARS
"""Characters of ``disconnect_details`` kept (a TEXT column): at 4 bytes each, under MySQL's
65,535-byte TEXT."""


def utc_now() -> datetime:
    """Now in UTC, without tzinfo, as every timestamp column stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


class WhatsappAccount(SQLModel, table=True):
    """One session (connected phone account) of a workspace."""

    __tablename__ = "whatsapp_accounts"
    __table_args__ = (
        # Session ids are scoped by workspace in the API and on storage (workspace_<id>/<sid>/).
        UniqueConstraint(
            "workspace_id", "session_id", name="uq_whatsapp_accounts_workspace_session"
        ),
        Index("ix_whatsapp_accounts_session_id", "session_id"),
        Index("ix_whatsapp_accounts_workspace_id", "workspace_id"),
        Index("ix_whatsapp_accounts_assigned_node_id", "assigned_node_id"),
        Index("ix_whatsapp_accounts_disconnect", "disconnect_reason", "disconnected_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: str = Field(max_length=ID_LENGTH)
    session_id: str = Field(max_length=ID_LENGTH)
    phone_number: str | None = Field(default=None, max_length=PHONE_LENGTH)
    status: str = Field(default="starting", max_length=STATUS_LENGTH)
    """The session state, lower case (``starting``, ``ready``, ``disconnected``…)."""
    assigned_node_id: str | None = Field(default=None, max_length=ID_LENGTH)
    assigned_node_url: str | None = Field(default=None, max_length=URL_LENGTH)
    previous_node_id: str | None = Field(default=None, max_length=ID_LENGTH)
    disconnected_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    disconnect_reason: str | None = Field(default=None, max_length=REASON_LENGTH)
    disconnect_details: str | None = Field(default=None, sa_type=Text)
    session_storage_path: str | None = Field(default=None, max_length=PATH_LENGTH)
    session_file_size_bytes: int | None = Field(default=None, sa_type=BigInteger)
    session_storage_verified_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    instance_migration_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """How many times the session moved to another node."""
    owner_epoch: int = Field(
        default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    """The newest owner epoch (etcd create revision) that wrote this row; older ones are refused."""
    last_instance_migration_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    last_activity_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    created_at: datetime = Field(default_factory=utc_now, sa_type=TIMESTAMP)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=TIMESTAMP)
