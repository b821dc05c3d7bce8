"""Create whatsapp_accounts with the assignment and disconnect columns.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

# Naive UTC; MySQL/MariaDB keep microseconds only when asked to.
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "whatsapp_accounts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("phone_number", sa.String(32), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("assigned_node_id", sa.String(64), nullable=True),
        sa.Column("assigned_node_url", sa.String(255), nullable=True),
        sa.Column("previous_node_id", sa.String(64), nullable=True),
        sa.Column("disconnected_at", TIMESTAMP, nullable=True),
        sa.Column("disconnect_reason", sa.String(64), nullable=True),
        sa.Column("disconnect_details", sa.Text(), nullable=True),
        sa.Column("last_activity_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("session_id", name="uq_whatsapp_accounts_session_id"),
    )
    op.create_index("ix_whatsapp_accounts_workspace_id", "whatsapp_accounts", ["workspace_id"])
    op.create_index(
        "ix_whatsapp_accounts_assigned_node_id", "whatsapp_accounts", ["assigned_node_id"]
    )
    op.create_index(
        "ix_whatsapp_accounts_disconnect",
        "whatsapp_accounts",
        ["disconnect_reason", "disconnected_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_whatsapp_accounts_disconnect", table_name="whatsapp_accounts")
    op.drop_index("ix_whatsapp_accounts_assigned_node_id", table_name="whatsapp_accounts")
    op.drop_index("ix_whatsapp_accounts_workspace_id", table_name="whatsapp_accounts")
    op.drop_table("whatsapp_accounts")
