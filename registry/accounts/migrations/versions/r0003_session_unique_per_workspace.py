"""Make session ids unique per workspace, not across the whole table.

The API and the storage tree (``workspace_<id>/<session_id>/``) scope a session id by its
workspace, so two workspaces may both have a session ``s-1``; a table-wide unique key made
their rows overwrite each other. ``session_id`` keeps an index for operators' lookups.
Downgrading fails if two workspaces share a session id (the old key cannot hold them).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.drop_constraint("uq_whatsapp_accounts_session_id", type_="unique")
        batch.create_unique_constraint(
            "uq_whatsapp_accounts_workspace_session", ["workspace_id", "session_id"]
        )
        batch.create_index("ix_whatsapp_accounts_session_id", ["session_id"])


def downgrade() -> None:
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.drop_index("ix_whatsapp_accounts_session_id")
        batch.drop_constraint("uq_whatsapp_accounts_workspace_session", type_="unique")
        batch.create_unique_constraint("uq_whatsapp_accounts_session_id", ["session_id"])
