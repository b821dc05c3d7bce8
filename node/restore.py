"""The restore pipeline: stored sessions started on this node from their credentials (READY
without a QR), when it acquires a slot or a pinned workspace.

At most ``restore_concurrency`` restores run at once across the whole node — every slot being
acquired shares them — and each holds a unit of the node's work budget while it opens, so a
failover or a cold start does not spike the CPU nor crowd out the calls. A session whose
meta says another node still runs it gets up to ``LET_GO_TIMEOUT_SECONDS`` to stop there first
(a pin move or a fenced owner), so it never runs twice — unless that node is provably gone
(:mod:`node.peer_liveness`: no longer a member, and its address refuses connections), so a
failover does not wait for a dead node. A node that lost its lease while running (revoked)
still answers on its address, and gets the wait: it stops at its next lease refresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from node.budget import WorkBudget
from node.epoch_fence import Fenced
from node.metrics import NodeMetrics
from node.quarantine_book import QuarantineBook
from node.reporting import SessionReporter
from node.session_factory import SessionFactory
from node.session_table import SessionTable
from node.storage import CorruptRecord, SessionMeta, SessionStorage
from registry import InvalidInput, MeshError

_log = structlog.get_logger(__name__)

RESTORE_START_TIMEOUT_SECONDS = 10.0
"""How long one restore may hold a restore slot while its driver connects."""
LET_GO_TIMEOUT_SECONDS = 1.0
"""How long a restore waits for a session's previous node to record it stopped. A node that
hands off or fences itself stops first; one that crashed never records it, so this bounds
what a crash adds to the failover time."""
LET_GO_POLL_SECONDS = 0.02
_LET_GO_STATES = frozenset({"stopped", "failed"})


class RestorePipeline:
    """Restores stored sessions into the session table (see the module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        storage: SessionStorage,
        table: SessionTable,
        factory: SessionFactory,
        reporter: SessionReporter,
        metrics: NodeMetrics,
        restore_concurrency: int,
        budget: WorkBudget,
        is_stopping: Callable[[], bool],
        is_node_gone: Callable[[str], Awaitable[bool]],
        quarantine: QuarantineBook,
    ) -> None:
        self._quarantine = quarantine
        self._budget = budget
        self._is_node_gone = is_node_gone
        self._node_id = node_id
        self._storage = storage
        self._table = table
        self._factory = factory
        self._reporter = reporter
        self._metrics = metrics
        self._restore_slots = asyncio.Semaphore(restore_concurrency)
        self._is_stopping = is_stopping

    async def restore_workspaces(
        self, workspace_ids: Iterable[str], *, epoch: int, fence_epoch: int | None = None
    ) -> int:
        """Start every stored, not deleted session of these workspaces that is not hosted yet,
        under ``epoch``; return how many started (``fence_epoch``: see
        :meth:`SessionFactory.open`)."""
        metas: list[SessionMeta] = []
        for workspace_id in workspace_ids:
            metas.extend(await self._stored_metas(workspace_id))
        results = await asyncio.gather(
            *(self._restore(meta, epoch, fence_epoch) for meta in metas),
            return_exceptions=True,
        )
        for meta, result in zip(metas, results, strict=True):
            if isinstance(result, (CorruptRecord, InvalidInput)):
                self._quarantine.quarantine(meta.workspace_id, meta.session_id, str(result))
            elif isinstance(result, BaseException):
                _log.error(
                    "session_restore_failed",
                    workspace_id=meta.workspace_id,
                    session_id=meta.session_id,
                    error=result,
                )
            elif result is True:
                self._quarantine.restored(meta.workspace_id, meta.session_id)
        return sum(1 for result in results if result is True)

    async def _stored_metas(self, workspace_id: str) -> list[SessionMeta]:
        """The workspace's stored, not deleted sessions. One that cannot be read is
        quarantined and the others are returned; a workspace whose folder cannot be listed
        (an impossible id in the catalog, a storage error) yields none."""
        try:
            session_ids = await self._storage.list_sessions(workspace_id)
        except InvalidInput as error:
            self._quarantine.quarantine(workspace_id, "", str(error))
            return []
        except MeshError as error:  # the storage failed or stalled: not the session's fault
            _log.error("workspace_restore_failed", workspace_id=workspace_id, error=error)
            return []
        metas: list[SessionMeta] = []
        for session_id in session_ids:
            try:
                meta = await self._storage.load_meta(workspace_id, session_id)
            except (CorruptRecord, InvalidInput) as error:
                self._quarantine.quarantine(workspace_id, session_id, str(error))
                continue
            except MeshError as error:
                _log.error(
                    "session_restore_failed",
                    workspace_id=workspace_id,
                    session_id=session_id,
                    error=error,
                )
                continue
            if meta is not None and not meta.deleted:
                metas.append(meta)
        return metas

    async def _wait_let_go(self, meta: SessionMeta) -> bool:
        """Wait (bounded) for a previous runner that may still run the session to record it
        stopped; whether there was one to wait for."""
        if meta.node_id in ("", self._node_id) or meta.state in _LET_GO_STATES:
            return False
        if await self._is_node_gone(meta.node_id):
            return False
        deadline = time.monotonic() + LET_GO_TIMEOUT_SECONDS
        stored: SessionMeta | None = meta
        while (
            stored is not None
            and stored.node_id not in ("", self._node_id)
            and stored.state not in _LET_GO_STATES
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(LET_GO_POLL_SECONDS)
            stored = await self._storage.load_meta(meta.workspace_id, meta.session_id)
        return True

    async def _restore(self, meta: SessionMeta, epoch: int, fence_epoch: int | None) -> bool:
        key = (meta.workspace_id, meta.session_id)
        if self._table.get(key) is not None:
            return False
        has_waited = await self._wait_let_go(meta)
        async with self._restore_slots, self._budget.background():
            async with self._table.locked(key):
                if self._table.get(key) is not None or self._is_stopping():
                    return False
                if has_waited:  # the previous runner wrote its last state meanwhile
                    meta = await self._storage.load_meta(*key) or meta
                if meta.deleted:
                    return False
                try:
                    session = await self._factory.open(
                        meta,
                        restore_credentials=True,
                        epoch=epoch,
                        fence_epoch=fence_epoch,
                        stored=meta,
                    )
                except Fenced:
                    return False  # a newer owner restored it already: we are the stale one
                self._table.adopt(session)
                self._reporter.assigned(session)
            self._metrics.session_restored()
            try:
                # Bounds the restores in flight, not the start itself: a slow one goes on.
                async with asyncio.timeout(RESTORE_START_TIMEOUT_SECONDS):
                    await session.wait_started()
            except TimeoutError:
                _log.warning(
                    "session_restore_slow",
                    workspace_id=meta.workspace_id,
                    session_id=meta.session_id,
                )
            return True
