"""The accounts database: the ``whatsapp_accounts`` model, its engine, its migrations, and
the queue-fed writer the node uses."""

from registry.accounts.changes import MoveHistory
from registry.accounts.engine import DEFAULT_DATABASE_URL, make_engine
from registry.accounts.models import WhatsappAccount
from registry.accounts.schema import current, downgrade, head_revision, upgrade
from registry.accounts.store import DEFAULT_MAX_PENDING_SESSIONS, AccountStore

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_MAX_PENDING_SESSIONS",
    "AccountStore",
    "MoveHistory",
    "WhatsappAccount",
    "current",
    "downgrade",
    "head_revision",
    "make_engine",
    "upgrade",
]
