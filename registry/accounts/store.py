"""The accounts database, written beside the call path.

CONTRACT (filled in by the registry work; signatures are fixed, the node uses them).
Every ``record_*`` method only enqueues and returns at once: no call waits on
the DB. A background task writes what is queued in batches (one transaction per
batch, activity coalesced per session), off the event loop.
"""

from __future__ import annotations


class AccountStore:
    """Queue-fed writer of the ``whatsapp_accounts`` table."""

    def __init__(self, database_url: str, *, flush_interval_seconds: float = 0.5) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Open the engine (schema must be at head, see ``sessionmesh-db upgrade``) and start."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Write everything queued, then close."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Write everything queued so far, and return when it is committed."""
        raise NotImplementedError

    def record_created(
        self,
        *,
        workspace_id: str,
        session_id: str,
        phone_number: str,
        node_id: str,
        node_url: str,
        storage_path: str,
    ) -> None:
        """A session was created on ``node_id`` (insert, or update if the row exists)."""
        raise NotImplementedError

    def record_assignment(
        self, *, workspace_id: str, session_id: str, node_id: str, node_url: str
    ) -> None:
        """The session now runs on ``node_id``. If it ran elsewhere before, that node becomes
        ``previous_node_id``, ``instance_migration_count`` grows by one and
        ``last_instance_migration_at`` is set; the same node again changes nothing."""
        raise NotImplementedError

    def record_status(self, *, workspace_id: str, session_id: str, status: str) -> None:
        """The session's state changed (``status`` is the state name, lower case, e.g. ``ready``)."""
        raise NotImplementedError

    def record_disconnect(
        self, *, workspace_id: str, session_id: str, reason: str, details: str
    ) -> None:
        """The session disconnected or was deleted: sets ``disconnected_at``, reason, details."""
        raise NotImplementedError

    def record_activity(self, *, workspace_id: str, session_id: str) -> None:
        """The session did something now; coalesced, written at the next flush."""
        raise NotImplementedError

    def record_storage(self, *, workspace_id: str, session_id: str, size_bytes: int) -> None:
        """The session's stored files were verified at ``size_bytes`` now."""
        raise NotImplementedError
