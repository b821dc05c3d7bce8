"""This node's catalog bookkeeping: which workspaces it runs, what each owned slot holds,
and the session counts it writes to the catalog (``catalog/<slot>/<workspace>`` in etcd).

A workspace's first entry is written before the create that made it is answered: a failover
restores what the catalog lists. Later counts are informational (rebalance plans, ``meshctl
where``) and go out with the next flush, at most ``CATALOG_FLUSH_SECONDS`` later, so a burst
of creates costs one etcd write per workspace, not one per session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import aetcd
import structlog

from registry import (
    ClusterKeys,
    MeshError,
    catalog_of,
    slot_of,
    stop_task,
    update_catalog_counts,
)

_log = structlog.get_logger(__name__)

CATALOG_FLUSH_SECONDS = 0.5
"""How long a changed session count may wait before it is written to the catalog."""


@dataclass
class _Batch:
    """Counts written together, and when that is done."""

    counts: dict[str, int] = field(default_factory=dict)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


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
        self._next_batch: _Batch | None = None
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def etcd(self) -> aetcd.Client:
        """The etcd client it writes with."""
        return self._etcd

    @property
    def keys(self) -> ClusterKeys:
        """The cluster's key layout."""
        return self._keys

    @property
    def slot_count(self) -> int:
        """Slots of the cluster."""
        return self._slot_count

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
        counts = {
            workspace_id: count
            for workspace_id in stale
            if self._written.get(workspace_id) != (count := self._session_count(workspace_id))
        }
        try:
            await update_catalog_counts(self._etcd, self._keys, counts, slot_count=self._slot_count)
        except BaseException:
            self._stale |= stale
            raise
        self._written.update(counts)

    async def _write(self, workspace_id: str, count: int) -> None:
        # Writes asked for while one is in flight go together, in one etcd transaction: a
        # burst of creates over many new workspaces costs a few round trips, not one each.
        batch = self._next_batch
        if batch is None:
            batch = self._next_batch = _Batch()
            asyncio.get_running_loop().call_soon(self._start_batch, batch)
        batch.counts[workspace_id] = count
        await asyncio.shield(batch.done)
        self._written[workspace_id] = count

    def _start_batch(self, batch: _Batch) -> None:
        self._next_batch = None
        task = asyncio.create_task(self._write_batch(batch), name="catalog-batch")
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _write_batch(self, batch: _Batch) -> None:
        try:
            await update_catalog_counts(
                self._etcd, self._keys, batch.counts, slot_count=self._slot_count
            )
        except BaseException as error:
            if not batch.done.done():
                batch.done.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            batch.done.set_result(None)

    async def _flush_later(self) -> None:
        await asyncio.sleep(CATALOG_FLUSH_SECONDS)
        await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except MeshError as error:  # counts are informational: the next change tries again
            _log.warning("catalog_flush_failed", node_id=self._node_id, error=error)


class CatalogBook:
    """The workspaces this node runs, the workspaces of each slot it owns (read from the
    catalog when the slot is acquired, kept up to date by creates), and the counts it writes."""

    def __init__(self, counts: CatalogCounts) -> None:
        self._etcd = counts.etcd
        self._keys = counts.keys
        self._slot_count = counts.slot_count
        self._served: set[str] = set()
        self._by_slot: dict[int, set[str]] = {}
        self.counts = counts
        """The session counts this node writes to the catalog."""

    def served(self) -> set[str]:
        """Workspaces whose stored sessions run here (restored or created), a copy."""
        return set(self._served)

    def served_in_slot(
        self, slot: int, *, excluding: set[str] | frozenset[str] = frozenset()
    ) -> set[str]:
        """The served workspaces of ``slot``, except those in ``excluding``."""
        return {
            workspace_id
            for workspace_id in self._served
            if slot_of(workspace_id, self._slot_count) == slot and workspace_id not in excluding
        }

    def unserved_by_slot(self) -> dict[int, set[str]]:
        """Per owned slot, the catalogued workspaces that do not run here (yet)."""
        return {slot: workspaces - self._served for slot, workspaces in self._by_slot.items()}

    def mark_served(self, workspace_ids: set[str] | list[str]) -> None:
        """These workspaces' sessions run here now."""
        self._served.update(workspace_ids)

    def mark_unserved(self, workspace_ids: set[str]) -> None:
        """These workspaces' sessions no longer run here."""
        self._served -= workspace_ids

    async def read_slot(self, slot: int) -> set[str]:
        """Read the workspaces ``slot`` holds from the catalog (one etcd read) and keep them
        as the slot's; the set of them."""
        workspaces = set(await catalog_of(self._etcd, self._keys, slot))
        self._by_slot[slot] = workspaces | self._by_slot.get(slot, set())
        return workspaces

    def forget_slot(self, slot: int) -> None:
        """The slot left this node."""
        self._by_slot.pop(slot, None)

    def forget_all(self) -> None:
        """Everything left this node (it fenced itself): forget it, and counts not written."""
        self._served.clear()
        self._by_slot.clear()
        self.counts.forget_pending()

    async def note_sessions(self, workspace_id: str) -> None:
        """Keep ``catalog/<slot>/<ws>`` in step after a create or delete (not per message)."""
        self._served.add(workspace_id)
        slot = slot_of(workspace_id, self._slot_count)
        self._by_slot.setdefault(slot, set()).add(workspace_id)
        await self.counts.note(workspace_id)
