"""Where a node's session changes go besides the watchers: metrics and the accounts DB.

``AccountStore.record_*`` only queue (the store writes in batches beside the call path), so
nothing here waits on the database.
"""

from __future__ import annotations

from datetime import UTC, datetime

from node.metrics import NodeMetrics
from node.session import HostedSession
from node.session_state import SessionState
from node.storage import SessionMeta, SessionStorage
from registry.accounts import AccountStore, MoveHistory


def _history(meta: SessionMeta) -> MoveHistory | None:
    """The session's moves as its stored meta counts them (None: an older meta, uncounted)."""
    if meta.instance_migration_count is None:
        return None
    moved_at = meta.last_instance_migration_at_unix
    return MoveHistory(
        count=meta.instance_migration_count,
        previous_node_id=meta.previous_node_id,
        moved_at=datetime.fromtimestamp(moved_at, UTC).replace(tzinfo=None) if moved_at else None,
    )


class SessionReporter:
    """A ``SessionObserver`` that feeds the node's metrics and (if any) the accounts DB."""

    def __init__(
        self,
        *,
        node_id: str,
        node_address: str,
        storage: SessionStorage,
        metrics: NodeMetrics,
        accounts: AccountStore | None,
    ) -> None:
        self._node_id = node_id
        self._node_address = node_address
        self._storage = storage
        self._metrics = metrics
        self._accounts = accounts

    def created(self, session: HostedSession) -> None:
        """A new session was created on this node."""
        if self._accounts is not None:
            self._accounts.record_created(
                workspace_id=session.workspace_id,
                session_id=session.session_id,
                phone_number=session.meta.phone_number,
                node_id=self._node_id,
                node_url=self._node_address,
                storage_path=self._storage_path(session),
                epoch=session.epoch,
                history=_history(session.meta),
            )

    def assigned(self, session: HostedSession) -> None:
        """A stored session now runs on this node (restored or adopted). It carries what its
        creation recorded too: if the creating node's rows never land, these still do."""
        if self._accounts is not None:
            self._accounts.record_assignment(
                workspace_id=session.workspace_id,
                session_id=session.session_id,
                node_id=self._node_id,
                node_url=self._node_address,
                epoch=session.epoch,
                history=_history(session.meta),
                phone_number=session.meta.phone_number,
                storage_path=self._storage_path(session),
            )

    def _storage_path(self, session: HostedSession) -> str:
        return str(self._storage.session_dir(session.workspace_id, session.session_id))

    def deleted_offline(
        self, workspace_id: str, session_id: str, *, reason: str, details: str
    ) -> None:
        """A stored session that was not running here was marked deleted."""
        if self._accounts is not None:
            self._accounts.record_status(
                workspace_id=workspace_id,
                session_id=session_id,
                status=SessionState.STOPPED.value,
            )
            self._accounts.record_disconnect(
                workspace_id=workspace_id, session_id=session_id, reason=reason, details=details
            )

    def stored_size(self, session: HostedSession, *, size_bytes: int) -> None:
        """The session's files were measured at ``size_bytes``."""
        if self._accounts is not None:
            self._accounts.record_storage(
                workspace_id=session.workspace_id,
                session_id=session.session_id,
                size_bytes=size_bytes,
                epoch=session.epoch,
            )

    # SessionObserver

    def state_changed(
        self, session: HostedSession, previous: SessionState, current: SessionState
    ) -> None:
        """Count the move and queue the new status."""
        self._metrics.state_changed(previous.value, current.value)
        if self._accounts is not None:
            self._accounts.record_status(
                workspace_id=session.workspace_id,
                session_id=session.session_id,
                status=current.value,
                epoch=session.epoch,
            )

    def disconnected(self, session: HostedSession, reason: str, details: str) -> None:
        """Queue the disconnect (or deletion) with its reason."""
        if self._accounts is not None:
            self._accounts.record_disconnect(
                workspace_id=session.workspace_id,
                session_id=session.session_id,
                reason=reason,
                details=details,
                epoch=session.epoch,
            )

    def limit_reached(self, session: HostedSession, what: str, kind: str) -> None:
        """A bound of the session applied: counted (``sessionmesh_node_dropped`` for the
        driver events, ``sessionmesh_node_refused`` for a refused call)."""
        if what == "driver_events":
            self._metrics.dropped(what, kind)
        else:
            self._metrics.refused(what)

    def activity(self, session: HostedSession) -> None:
        """Queue the activity time (coalesced by the store)."""
        if self._accounts is not None:
            self._accounts.record_activity(
                workspace_id=session.workspace_id,
                session_id=session.session_id,
                epoch=session.epoch,
            )
