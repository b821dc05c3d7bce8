"""Whether this node's session storage answers, and what the node does when it does not.

A hung mount (NFS that stopped answering) must not leave the node holding slots it cannot
serve. :class:`StorageHealth` learns of a stall two ways: any storage call that passes its
deadline (``SessionStorage``'s ``on_stall``), and a probe — a small durable write and read
of ``<root>/.health/<node_id>`` every ``probe_interval_seconds``, bounded by the storage
deadline, on a thread of its own (the storage's threads may all be stuck). While unhealthy:

- the gRPC health service says ``NOT_SERVING`` (``on_change``), so load balancers and
  ``meshctl health`` see it;
- the heartbeat gives the lease up (its ``is_healthy`` reads :meth:`is_healthy` from its own
  thread), so the node's slots fail over to nodes whose storage answers — within the
  storage deadline plus one lease refresh interval of the storage stopping;
- the probe keeps trying; the first one that succeeds makes the node healthy again, and the
  heartbeat takes a new lease.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from node import commit_io
from node.daemon_pool import DaemonThreadPool
from registry import stop_task

_log = structlog.get_logger(__name__)

DEFAULT_PROBE_INTERVAL_SECONDS = 2.0
HEALTH_FOLDER = ".health"
"""Under the storage root; starts with a dot, so session scans skip it."""


class StorageHealth:
    """The storage's health as this node last saw it (see the module docstring)."""

    def __init__(
        self,
        *,
        root: Path,
        node_id: str,
        timeout_seconds: float,
        on_change: Callable[[bool], None],
        probe_interval_seconds: float = DEFAULT_PROBE_INTERVAL_SECONDS,
    ) -> None:
        self._probe_path = root / HEALTH_FOLDER / node_id
        self._node_id = node_id
        self._timeout_seconds = timeout_seconds
        self._on_change = on_change
        self._probe_interval_seconds = probe_interval_seconds
        self._is_healthy = True
        """Read by the heartbeat thread: a plain bool, written only on the event loop."""
        self._executor = DaemonThreadPool(1, thread_name_prefix="storage-probe")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def is_healthy(self) -> bool:
        """Whether the storage answered lately (safe to call from any thread)."""
        return self._is_healthy

    def start(self) -> None:
        """Probe every interval from now on."""
        if self._task is None:
            self._task = asyncio.create_task(self._probe_forever(), name="storage-probe")

    async def stop(self) -> None:
        """Stop probing (a probe stuck in a hung mount is left behind)."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def stalled(self) -> None:
        """A storage call passed its deadline: unhealthy until a probe succeeds."""
        self._set(False, reason="a storage call passed its deadline")
        self._wake.set()

    async def _probe_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                async with asyncio.timeout(self._probe_interval_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            is_answering = await self._probe()
            self._set(is_answering, reason="the probe " + ("worked" if is_answering else "failed"))

    async def _probe(self) -> bool:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, _write_and_read, self._probe_path)
        try:
            async with asyncio.timeout(self._timeout_seconds):
                await future
        except (TimeoutError, OSError) as error:
            _log.warning("storage_probe_failed", node_id=self._node_id, error=repr(error))
            return False
        return True

    def _set(self, is_healthy: bool, *, reason: str) -> None:
        if is_healthy is self._is_healthy:
            return
        self._is_healthy = is_healthy
        if is_healthy:
            _log.info("storage_healthy", node_id=self._node_id, reason=reason)
        else:
            _log.error("storage_unhealthy", node_id=self._node_id, reason=reason)
        self._on_change(is_healthy)


def _write_and_read(path: Path) -> None:
    """One small durable write and a read back (in the probe's thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(8)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(descriptor, payload)
        commit_io.fsync_file(descriptor)  # through the module: the test kit hangs it
    finally:
        os.close(descriptor)
    if path.read_bytes() != payload:
        raise OSError(f"{path} did not read back what was written")
