"""Fencing: a stale owner must never write, and a node without a lease must run nothing.

Two mechanisms. :class:`EpochFence` guards one session's writes to shared storage: the
owner's epoch (the create revision of its ownership key) is recorded in ``meta.json``; a
write is refused once the stored epoch is newer than the session's own, because a newer
owner has restored the session. :class:`LeaseWatchdog` stops everything on this node when
its etcd lease has not been refreshed for most of its TTL: the ownership keys are bound to
that lease, so another node may take them once it expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from node.storage import SessionStorage
from registry.background import stop_task
from registry.errors import Unavailable
from registry.membership import NodeRegistration

_log = logging.getLogger(__name__)

FENCED_RETRY_AFTER_MS = 100
"""Retry hint of a call refused because its session moved to a newer owner."""
LEASE_FENCE_SHARE = 0.6
"""The node stops its sessions once this share of the lease TTL passed without a refresh:
well before the lease can expire and another node can take the keys."""


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
        self._checked_at = float("-inf")

    @property
    def epoch(self) -> int:
        """The owner epoch this session runs under (0: no ownership, e.g. unit tests)."""
        return self._epoch

    @property
    def is_fenced(self) -> bool:
        """Whether a newer owner was seen: no write may happen any more."""
        return self._is_fenced

    async def check(self, *, max_age_seconds: float = 0.0) -> None:
        """Raise ``Fenced`` if the stored epoch is newer than ours.

        ``max_age_seconds`` > 0 trusts a check younger than that (for frequent writes such as
        acks); 0 always reads the stored meta (before state changes and accepted sends).
        """
        if self._is_fenced:
            raise Fenced(f"session {self._workspace_id}/{self._session_id} is fenced")
        now = time.monotonic()
        if max_age_seconds > 0 and now - self._checked_at < max_age_seconds:
            return
        stored = await self._storage.load_meta(self._workspace_id, self._session_id)
        self._checked_at = now
        if stored is not None and stored.owner_epoch > self._epoch:
            self._is_fenced = True
            _log.warning(
                "session_fenced workspace_id=%s session_id=%s epoch=%d stored_epoch=%d",
                self._workspace_id,
                self._session_id,
                self._epoch,
                stored.owner_epoch,
            )
            raise Fenced(
                f"session {self._workspace_id}/{self._session_id} moved to a newer owner "
                f"(epoch {stored.owner_epoch} > {self._epoch})"
            )


class LeaseWatchdog:
    """Calls ``on_expiring()`` once when the lease has gone unrefreshed for
    ``LEASE_FENCE_SHARE`` of its TTL, and ``on_recovered()`` after the next refresh."""

    def __init__(
        self,
        registration: NodeRegistration,
        *,
        lease_ttl_seconds: float,
        on_expiring: Callable[[], None],
        on_recovered: Callable[[], None],
    ) -> None:
        self._registration = registration
        self._limit_seconds = lease_ttl_seconds * LEASE_FENCE_SHARE
        self._on_expiring = on_expiring
        self._on_recovered = on_recovered
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (returns at once)."""
        self._task = asyncio.create_task(self._watch(), name="lease-watchdog")

    async def stop(self) -> None:
        """Stop watching."""
        await stop_task(self._task)
        self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        has_fired = False
        while True:
            # Checked often enough that the fence lands well before the TTL runs out.
            await asyncio.sleep(self._limit_seconds / 6)
            age_seconds = loop.time() - self._registration.last_refreshed_at
            if age_seconds <= self._limit_seconds and self._registration.has_lease:
                if has_fired:
                    has_fired = False
                    _call(self._on_recovered)
                continue
            if not has_fired:
                has_fired = True
                _log.error(
                    "lease_fence node_id=%s unrefreshed_seconds=%.2f",
                    self._registration.record.node_id,
                    age_seconds,
                )
                _call(self._on_expiring)


def _call(callback: Callable[[], None]) -> None:
    # A failing callback must not end the watchdog.
    try:
        callback()
    except Exception:
        _log.exception("lease_watchdog_callback_failed callback=%r", callback)
