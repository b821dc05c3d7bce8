"""Opening a session on this node: its driver, outbox, credentials and epoch fence, its meta
written as STARTING here under the epoch its call or move was authorized under."""

from __future__ import annotations

import time
from collections.abc import Callable

from node.drivers.base import DriverFactory
from node.epoch_fence import EpochFence, Fenced
from node.session import HostedSession, SessionObserver
from node.session_limits import DEFAULT_LIMITS, SessionLimits
from node.storage import SessionMeta, SessionStorage
from node.storage_errors import StaleWrite
from node.webhooks.hub import WebhookHub


class SessionFactory:
    """Builds :class:`HostedSession` objects for this node (not started yet)."""

    def __init__(
        self,
        *,
        node_id: str,
        storage: SessionStorage,
        driver_factory: DriverFactory,
        observer: SessionObserver,
        on_fenced: Callable[[HostedSession], None],
        may_write: Callable[[], int],
        limits: SessionLimits = DEFAULT_LIMITS,
        webhooks: WebhookHub | None = None,
    ) -> None:
        self._limits = limits
        self._webhooks = webhooks
        self._may_write = may_write
        self._node_id = node_id
        self._storage = storage
        self._driver_factory = driver_factory
        self._observer = observer
        self._on_fenced = on_fenced

    async def open(
        self,
        meta: SessionMeta,
        *,
        restore_credentials: bool,
        epoch: int,
        fence_epoch: int | None = None,
        is_new: bool = False,
        stored: SessionMeta | None = None,
    ) -> HostedSession:
        """A new session for ``meta`` with its outbox (and credentials), its meta written to
        storage as STARTING on this node under ``epoch`` (the epoch calls are authorized
        under).

        ``fence_epoch``: the epoch the session's files and accounts row are written under, when
        it is not ``epoch`` — a workspace taken back from a pinned owner, whose files name the
        pin key's epoch, which the slot key may predate (see ``registry.takeover_epoch``).
        Raises ``Fenced`` if the stored meta already names a newer epoch than the fence's.
        ``is_new``: nothing is stored for the session yet (its meta was just read, absent),
        so there is nothing to check or read back. ``stored``: the meta as just read from
        storage, checked instead of reading it again.
        """
        workspace_id, session_id = meta.workspace_id, meta.session_id
        fenced_under = epoch if fence_epoch is None else fence_epoch
        fence = EpochFence(self._storage, workspace_id, session_id, epoch=fenced_under)
        if stored is not None:
            fence.check_against(stored)
        elif not is_new:
            await fence.check()
        credentials = (
            await self._storage.load_credentials(workspace_id, session_id)
            if restore_credentials and not is_new
            else None
        )
        lease = self._may_write()
        entries = (
            []
            if is_new
            else await self._storage.open_messages(
                workspace_id,
                session_id,
                may_write=lambda: lease != 0 and self._may_write() == lease,
            )
        )
        events = (
            []
            if is_new
            else await self._storage.open_events(
                workspace_id,
                session_id,
                may_write=lambda: lease != 0 and self._may_write() == lease,
            )
        )
        session = HostedSession(
            meta=_opened_here(meta, self._node_id, fenced_under),
            storage=self._storage,
            driver=self._driver_factory(workspace_id, session_id),
            outbox_entries=entries,
            credentials=credentials,
            observer=self._observer,
            fence=fence,
            on_fenced=self._on_fenced,
            may_write=self._may_write,
            limits=self._limits,
            authorized_epoch=epoch,
            events=events,
            moved_from="" if meta.node_id in ("", self._node_id) else meta.node_id,
            webhooks=self._webhooks,
        )
        try:
            await self._storage.save_meta(session.meta, fence_epoch=fenced_under)
        except StaleWrite as error:
            raise Fenced(f"session {workspace_id}/{session_id}: {error}") from error
        return session


def _opened_here(meta: SessionMeta, node_id: str, epoch: int) -> SessionMeta:
    """``meta`` as a session opened on ``node_id`` under ``epoch`` records it: a session that
    ran on another node before has moved once more (its count travels with it, so the
    accounts DB gets every move exactly once whichever node's rows land first)."""
    now = time.time()
    opened = meta.changed(node_id=node_id, deleted=False, updated_at_unix=now, owner_epoch=epoch)
    if meta.node_id in ("", node_id):
        return opened
    count = meta.instance_migration_count
    return opened.changed(
        instance_migration_count=None if count is None else count + 1,
        previous_node_id=meta.node_id,
        last_instance_migration_at_unix=now,
    )
