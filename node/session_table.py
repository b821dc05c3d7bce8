"""The sessions this node hosts, by key and by workspace, and the per-session locks.

One create or delete runs per session at a time (:meth:`SessionTable.locked`); other sessions
proceed in parallel. Creates in flight are reserved against the node's capacity before they
are hosted, so racing creates cannot overshoot it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from node.metrics import NodeMetrics
from node.session import HostedSession
from registry import CapacityExhausted

SessionKey = tuple[str, str]
"""``(workspace_id, session_id)``."""


@dataclass
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SessionTable:
    """Hosted sessions (see the module docstring)."""

    def __init__(self, *, node_id: str, max_sessions: int, metrics: NodeMetrics) -> None:
        self._node_id = node_id
        self._max_sessions = max_sessions
        self._metrics = metrics
        self._sessions: dict[SessionKey, HostedSession] = {}
        self._by_workspace: dict[str, dict[str, HostedSession]] = {}
        self._key_locks: dict[SessionKey, _KeyLock] = {}
        self._reserved = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: SessionKey) -> HostedSession | None:
        """The hosted session of ``key``, if any."""
        return self._sessions.get(key)

    def of_workspace(self, workspace_id: str) -> dict[str, HostedSession]:
        """The workspace's hosted sessions by session id (a copy)."""
        return dict(self._by_workspace.get(workspace_id, {}))

    def count(self, workspace_id: str) -> int:
        """Sessions of ``workspace_id`` hosted now."""
        return len(self._by_workspace.get(workspace_id, ()))

    def workspaces(self) -> set[str]:
        """Every workspace with a session hosted here."""
        return set(self._by_workspace)

    def all(self) -> list[HostedSession]:
        """Every hosted session."""
        return list(self._sessions.values())

    @asynccontextmanager
    async def locked(self, key: SessionKey) -> AsyncIterator[None]:
        """Run a create or delete of ``key`` alone."""
        # Counted so the lock is dropped when its last user leaves, never while one waits.
        entry = self._key_locks.get(key)
        if entry is None:
            entry = self._key_locks[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._key_locks[key]

    @asynccontextmanager
    async def reservation(self) -> AsyncIterator[None]:
        """Hold one session's room while a create reads and writes; ``CapacityExhausted`` if
        the node hosts (or is creating) as many sessions as it may."""
        if len(self._sessions) + self._reserved >= self._max_sessions:
            raise CapacityExhausted(
                f"node {self._node_id} hosts {len(self._sessions)} sessions, its limit"
            )
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1

    def adopt(self, session: HostedSession) -> None:
        """Host ``session`` and start it."""
        self._sessions[(session.workspace_id, session.session_id)] = session
        self._by_workspace.setdefault(session.workspace_id, {})[session.session_id] = session
        self._metrics.state_changed(None, session.state.value)
        self._metrics.hosted(len(self._sessions))
        session.start()

    def remove(self, session: HostedSession) -> bool:
        """Stop hosting ``session`` (not stopped here); False if it was not the hosted one."""
        key = (session.workspace_id, session.session_id)
        if self._sessions.get(key) is not session:
            return False
        del self._sessions[key]
        sessions = self._by_workspace[session.workspace_id]
        del sessions[session.session_id]
        if not sessions:
            del self._by_workspace[session.workspace_id]
        self._metrics.hosted(len(self._sessions))
        return True

    def take_workspaces(self, workspace_ids: Iterable[str]) -> list[HostedSession]:
        """Stop hosting every session of these workspaces; the sessions (to be stopped)."""
        taken: list[HostedSession] = []
        for workspace_id in workspace_ids:
            taken.extend(self._by_workspace.get(workspace_id, {}).values())
        for session in taken:
            self.remove(session)
        return taken

    def take_all(self) -> list[HostedSession]:
        """Stop hosting every session; the sessions (to be stopped)."""
        return self.take_workspaces(list(self._by_workspace))
