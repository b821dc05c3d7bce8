"""A watch-fed copy of part of etcd: load, then follow a watch, resync after it breaks.

:class:`WatchMirror` is what :class:`registry.membership.MembershipWatcher` (``nodes/``) and
:class:`registry.ownership.OwnershipView` (``owners/``, ``pins/``…) share: a first read, a
watch from the revision after it, and — when the watch breaks (etcd restarted, the history
was compacted) — a fresh read with backoff and a new watch. Subscribers hear of every change;
waiters wait for a condition with a deadline. Lookups read the copy: never etcd.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import aetcd
import structlog

from registry.background import call_safely, stop_task
from registry.backoff import Backoff, Retries
from registry.etcd import etcd_errors

_log = structlog.get_logger(__name__)

RESYNC_BACKOFF = Backoff(initial_seconds=0.1, max_seconds=2.0)
"""Pause before each fresh read while etcd does not answer."""
HEALTHY_WATCH_SECONDS = 2.0
"""A watch that ran this long before it broke starts a new outage: the backoff restarts."""

Snapshot = TypeVar("Snapshot")


class WatchMirror(abc.ABC, Generic[Snapshot]):
    """Keeps a copy of the keys under ``watch_prefix`` in step with etcd (see the module
    docstring); subclasses say how to read, apply an event and snapshot the copy."""

    def __init__(self, client: aetcd.Client, *, watch_prefix: bytes, name: str) -> None:
        self._client = client
        self._watch_prefix = watch_prefix
        self._name = name
        self._subscribers: list[Callable[[Snapshot], None]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """What subscribers and waiters are handed: the copy as it is now."""

    @abc.abstractmethod
    async def _reload(self) -> tuple[int, bool]:
        """Replace the copy with a fresh read: the revision it reflects, whether it changed."""

    @abc.abstractmethod
    def _apply(self, event: Any) -> bool:
        """Apply one watch event; whether the copy changed."""

    async def start(self) -> None:
        """Load the current state, then follow changes (resyncing after errors).

        Raises ``Unavailable`` if the first read fails.
        """
        with etcd_errors(f"read the {self._name}"):
            revision, is_changed = await self._reload()
        if is_changed:
            self._notify()
        self._task = asyncio.create_task(self._follow(revision), name=f"{self._name}-watch")

    async def stop(self) -> None:
        """Stop watching."""
        await stop_task(self._task)
        self._task = None

    def subscribe(self, callback: Callable[[Snapshot], None]) -> None:
        """Call ``callback(snapshot)`` now and after every change."""
        self._subscribers.append(callback)
        callback(self.snapshot())

    def unsubscribe(self, callback: Callable[[Snapshot], None]) -> None:
        """Stop calling ``callback``."""
        self._subscribers.remove(callback)

    async def wait_until(
        self, predicate: Callable[[Snapshot], bool], *, timeout_seconds: float
    ) -> Snapshot:
        """Wait until ``predicate(snapshot)`` holds and return that snapshot.

        For example ``await watcher.wait_until(lambda nodes: len(nodes) == 2,
        timeout_seconds=10)``. Raises ``TimeoutError`` after the deadline.
        """
        async with asyncio.timeout(timeout_seconds):
            while True:
                changed = self._changed
                snapshot = self.snapshot()
                if predicate(snapshot):
                    return snapshot
                await changed.wait()

    def _notify(self) -> None:
        # A fresh event per change, so a waiter that saw the old state always wakes up.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for callback in list(self._subscribers):
            call_safely(callback, self.snapshot())

    async def _follow(self, revision: int) -> None:
        loop = asyncio.get_running_loop()
        retries = Retries(RESYNC_BACKOFF)
        while True:
            started_at = loop.time()
            try:
                await self._watch_from(revision + 1)
            except Exception as error:
                # etcd restarted, the stream broke or the revision was compacted.
                _log.warning("watch_broken", mirror=self._name, error=error)
            if loop.time() - started_at > HEALTHY_WATCH_SECONDS:
                retries.reset()  # the watch was healthy for a while: a new outage
            while True:
                await asyncio.sleep(retries.next_delay_seconds())
                try:
                    revision, is_changed = await self._reload()
                except aetcd.ClientError as error:
                    _log.warning("watch_resync_failed", mirror=self._name, error=error)
                    continue
                if is_changed:
                    self._notify()
                break

    async def _watch_from(self, start_revision: int) -> None:
        watch = await self._client.watch_prefix(self._watch_prefix, start_revision=start_revision)
        try:
            async for event in watch:
                if self._apply(event):
                    self._notify()
        finally:
            await watch.cancel()
