"""Add session storage metadata and instance migration tracking.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

# Naive UTC; MySQL/MariaDB keep microseconds only when asked to.
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.add_column(sa.Column("session_storage_path", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("session_file_size_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("session_storage_verified_at", TIMESTAMP, nullable=True))
        batch.add_column(
            sa.Column("instance_migration_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("last_instance_migration_at", TIMESTAMP, nullable=True))


def downgrade() -> None:
    # batch mode: SQLite rebuilds the table (keeping its indexes) to drop columns.
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.drop_column("last_instance_migration_at")
        batch.drop_column("instance_migration_count")
        batch.drop_column("session_storage_verified_at")
        batch.drop_column("session_file_size_bytes")
        batch.drop_column("session_storage_path")
