"""The session counts a node writes to the catalog (``catalog/<slot>/<workspace>`` in etcd).

A workspace's first entry is written before the create that made it is answered: a failover
restores what the catalog lists. Later counts are informational (rebalance plans, ``meshctl
where``) and go out with the next flush, at most ``CATALOG_FLUSH_SECONDS`` later, so a burst
of creates costs one etcd write per workspace, not one per session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aetcd

from registry.background import stop_task
from registry.errors import MeshError
from registry.keys import ClusterKeys
from registry.ownership import update_catalog

_log = logging.getLogger(__name__)

CATALOG_FLUSH_SECONDS = 0.5
"""How long a changed session count may wait before it is written to the catalog."""


class CatalogCounts:
    """Writes each workspace's session count to the catalog: the first at once, later ones
    coalesced."""

    def __init__(
        self,
        etcd: aetcd.Client,
        keys: ClusterKeys,
        *,
        slot_count: int,
        session_count: Callable[[str], int],
        node_id: str,
    ) -> None:
        self._etcd = etcd
        self._keys = keys
        self._slot_count = slot_count
        self._session_count = session_count
        self._node_id = node_id
        self._written: dict[str, int] = {}
        """The count last written for each workspace."""
        self._stale: set[str] = set()
        """Workspaces whose count changed since: written together by the next flush."""
        self._flush_timer: asyncio.Task[None] | None = None
        self._is_closed = False

    async def note(self, workspace_id: str) -> None:
        """The workspace's session count changed (or may have): record it."""
        count = self._session_count(workspace_id)
        written = self._written.get(workspace_id)
        if written == count:
            return
        if written is None or self._is_closed:
            await self._write(workspace_id, count)  # closed: no timer may outlive the node
            return
        self._stale.add(workspace_id)
        if self._flush_timer is None or self._flush_timer.done():
            self._flush_timer = asyncio.create_task(self._flush_later())

    def forget_pending(self) -> None:
        """Drop the counts not written yet (the node was fenced: its sessions run elsewhere)."""
        self._stale.clear()

    async def close(self) -> None:
        """Stop the flush timer and write what is pending (the node is stopping); later
        changes are written at once."""
        self._is_closed = True
        await stop_task(self._flush_timer)
        self._flush_timer = None
        await self._flush_logged()

    async def flush(self) -> None:
        """Write every changed session count now."""
        stale, self._stale = self._stale, set()
        try:
            for workspace_id in sorted(stale):
                count = self._session_count(workspace_id)
                if self._written.get(workspace_id) != count:
                    await self._write(workspace_id, count)
                stale.discard(workspace_id)
        finally:
            self._stale |= stale

    async def _write(self, workspace_id: str, count: int) -> None:
        await update_catalog(
            self._etcd, self._keys, workspace_id, session_count=count, slot_count=self._slot_count
        )
        self._written[workspace_id] = count

    async def _flush_later(self) -> None:
        await asyncio.sleep(CATALOG_FLUSH_SECONDS)
        await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except MeshError as error:  # counts are informational: the next change tries again
            _log.warning("catalog_flush_failed node_id=%s error=%r", self._node_id, error)
