"""The epoch fence: a stale owner must never write a session's files.

:class:`EpochFence` guards one session's writes to shared storage: the owner's epoch (the
create revision of its ownership key) is recorded in ``meta.json``; a write is refused once
the stored epoch is newer than the session's own, because a newer owner has restored the
session. (The node-wide fence — no lease, no sessions — is :mod:`node.lease_fence`.)
"""

from __future__ import annotations

import structlog

from node.storage import SessionMeta, SessionStorage
from registry import Unavailable

_log = structlog.get_logger(__name__)

FENCED_RETRY_AFTER_MS = 100
"""Retry hint of a call refused because its session moved to a newer owner."""


class Fenced(Unavailable):
    """The session's stored epoch is newer than this node's: another node owns it now."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_ms=FENCED_RETRY_AFTER_MS)


class EpochFence:
    """The epoch one hosted session runs under, checked against ``meta.json`` before writes."""

    def __init__(
        self, storage: SessionStorage, workspace_id: str, session_id: str, *, epoch: int
    ) -> None:
        self._storage = storage
        self._workspace_id = workspace_id
        self._session_id = session_id
        self._epoch = epoch
        self._is_fenced = False

    @property
    def epoch(self) -> int:
        """The owner epoch this session runs under."""
        return self._epoch

    async def check(self) -> None:
        """Raise ``Fenced`` if the stored epoch is newer than ours (reads ``meta.json``)."""
        if self._is_fenced:
            raise Fenced(f"session {self._workspace_id}/{self._session_id} is fenced")
        self.check_against(await self._storage.load_meta(self._workspace_id, self._session_id))

    def check_against(self, stored: SessionMeta | None) -> None:
        """Raise ``Fenced`` if ``stored`` (the meta just read) names a newer epoch than ours."""
        if stored is not None and stored.owner_epoch > self._epoch:
            self._is_fenced = True
            _log.warning(
                "session_fenced",
                workspace_id=self._workspace_id,
                session_id=self._session_id,
                epoch=self._epoch,
                stored_epoch=stored.owner_epoch,
            )
            raise Fenced(
                f"session {self._workspace_id}/{self._session_id} moved to a newer owner "
                f"(epoch {stored.owner_epoch} > {self._epoch})"
            )
