"""This node's record of the sessions it could not restore (:mod:`registry.quarantine`).

A restore that meets a session it cannot read — a ``meta.json`` or ``credentials.json`` that
does not parse, a catalog entry naming an impossible workspace — quarantines that session
and goes on with the others: logged (``session_quarantined``), counted
(``sessionmesh_node_sessions_quarantined``), written to etcd in the background (``meshctl
quarantine`` lists it), and answered ``DATA_LOSS`` with the reason while it stays so. When the
session restores later (its slot acquired again after an operator repaired its files), it is
taken out of quarantine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import aetcd
import structlog

from node.metrics import NodeMetrics
from registry import ClusterKeys, MeshError, quarantine_session, release_quarantine, stop_task

_log = structlog.get_logger(__name__)

STOP_TIMEOUT_SECONDS = 2.0
"""How long stopping waits for the etcd writes still in flight."""

SessionKey = tuple[str, str]


class QuarantineBook:
    """The sessions quarantined here, by (workspace_id, session_id)."""

    def __init__(
        self, *, etcd: aetcd.Client, keys: ClusterKeys, node_id: str, metrics: NodeMetrics
    ) -> None:
        self._etcd = etcd
        self._keys = keys
        self._node_id = node_id
        self._metrics = metrics
        self._reasons: dict[SessionKey, str] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def reason_of(self, workspace_id: str, session_id: str) -> str | None:
        """Why the session is quarantined here, or None if it is not."""
        return self._reasons.get((workspace_id, session_id))

    def quarantine(self, workspace_id: str, session_id: str, reason: str) -> None:
        """Record that the session cannot be restored (``session_id`` empty: the workspace)."""
        key = (workspace_id, session_id)
        is_new = key not in self._reasons
        self._reasons[key] = reason
        if not is_new:
            return
        _log.error(
            "session_quarantined",
            node_id=self._node_id,
            workspace_id=workspace_id,
            session_id=session_id,
            reason=reason,
        )
        self._metrics.quarantined()
        self._write(
            quarantine_session(
                self._etcd,
                self._keys,
                workspace_id=workspace_id,
                session_id=session_id,
                node_id=self._node_id,
                reason=reason,
            )
        )

    def restored(self, workspace_id: str, session_id: str) -> None:
        """The session restored: out of quarantine, if it was in."""
        if self._reasons.pop((workspace_id, session_id), None) is None:
            return
        _log.info("session_released", workspace_id=workspace_id, session_id=session_id)
        self._write(
            release_quarantine(
                self._etcd, self._keys, workspace_id=workspace_id, session_id=session_id
            )
        )

    def _write(self, write: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await write
            except MeshError as error:  # etcd away: the log and the metric still have it
                _log.warning("quarantine_write_failed", error=error)

        task = asyncio.create_task(run(), name="quarantine-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def stop(self) -> None:
        """Let the etcd writes in flight finish (bounded), then drop what is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await asyncio.gather(*self._writes, return_exceptions=True)
        for task in list(self._writes):
            await stop_task(task)
