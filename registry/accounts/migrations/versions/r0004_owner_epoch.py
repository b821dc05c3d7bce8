"""Record the owner epoch that last wrote each account row, so older ones are refused.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.add_column(
            sa.Column("owner_epoch", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.drop_column("owner_epoch")
