"""The node's one budget of work in flight: calls, restores and handoffs share it.

Overload is answered, not queued: a call that finds the budget spent is refused at once with
``RESOURCE_EXHAUSTED`` and a retry hint (``sessionmesh-retry-after-ms`` and the standard
``grpc-retry-pushback-ms``), which the gateway and the proxyless client honour within the
caller's deadline — so no call waits unboundedly in a queue, and a busy node pushes back on its
callers instead of falling behind its lease. Restores and handoffs wait for the budget instead
of failing: after a fence or a failover they are paced by it, so a storm of restores cannot
starve the calls for the sessions already running, nor build up more work than the node
can do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from node.metrics import NodeMetrics
from registry import PUSHBACK_METADATA_KEY, CapacityExhausted

BUSY_RETRY_AFTER_MS = 50
"""Retry hint of a call refused because the node is at its in-flight limit."""


class Busy(CapacityExhausted):
    """The node has as much work in flight as it may: retry after the hint."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_ms=BUSY_RETRY_AFTER_MS)
        self.metadata = (*self.metadata, (PUSHBACK_METADATA_KEY, str(BUSY_RETRY_AFTER_MS)))


class WorkBudget:
    """At most ``limit`` calls, restores and handoffs at once (see the module docstring)."""

    def __init__(self, *, node_id: str, limit: int, metrics: NodeMetrics) -> None:
        self._node_id = node_id
        self._limit = limit
        self._metrics = metrics
        self._in_flight = 0
        self._released = asyncio.Event()

    @property
    def limit(self) -> int:
        """The most work in flight at once."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Work in flight now."""
        return self._in_flight

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Hold one unit for a call, or refuse it at once with :class:`Busy`."""
        if self._in_flight >= self._limit:
            self._metrics.call_shed()
            raise Busy(
                f"node {self._node_id} has {self._in_flight} calls, restores and handoffs "
                "in flight, its limit: retry shortly"
            )
        self._take()
        try:
            yield
        finally:
            self._give_back()

    @asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """Hold one unit for a restore or a handoff, waiting until one is free."""
        while self._in_flight >= self._limit:
            released = self._released
            await released.wait()
        self._take()
        try:
            yield
        finally:
            self._give_back()

    def _take(self) -> None:
        self._in_flight += 1
        self._metrics.in_flight(self._in_flight)

    def _give_back(self) -> None:
        self._in_flight -= 1
        self._metrics.in_flight(self._in_flight)
        # A fresh event per release, so every waiter looks again.
        released, self._released = self._released, asyncio.Event()
        released.set()
