"""Durable writes committed in groups: one trip to the worker thread for many files.

Every write of the session storage is durable before its caller goes on (an acknowledged
message is on disk). Done one by one, that is a flush per write, and a burst of sends or
creates queues behind the disk. :class:`GroupCommitWriter` takes every operation queued while
the previous group was being committed and commits them together, in order, in one worker
thread (:mod:`node.commit_io`: how each file is written, flushed and, on failure, taken back):

- **replace** (a whole file, atomically: ``meta.json``, ``credentials.json``, a compacted
  message log): written to a temp file in the same folder and renamed over the target, so a
  crash leaves the old file or the new one, never half of one;
- **append** (a record at the end of a session's message log, through a file kept open):
  one ``write``; *durable* appends (an accepted message) are flushed with the group. Others
  (an ack's status, :meth:`GroupCommitWriter.append_later`) do not wait at all: they are
  queued, and written with the next group — which starts at once for a durable operation,
  or after ``LINGER_SECONDS`` when only such appends are queued, so the three acks of a
  message (and those of its neighbours) share one trip to the worker thread. A crash may lose
  them; a status is re-derived (the message is handed to the network again, which dedupes);
- **close** (a session stops): its log file is flushed and closed.

A group never holds an append to a file it also replaces (the append waits for the next
group), so appends always land in the file as renamed.

**Bounded in size.** At most ``max_queued`` operations wait (``MAX_QUEUED_OPS``): past it a
durable append or a replacement is refused before it is queued (:class:`StorageBusy`,
``RESOURCE_EXHAUSTED`` with a retry hint: nothing written), and a status appended without
waiting is dropped and counted (``on_dropped``; re-derived as above). A close is always
queued (one per stopping session).

**Bounded in time.** Storage (a local disk, or NFS that can hang) is used from threads of its
own, never the default pool, and no caller waits longer than ``timeout_seconds``: an operation
still queued then is dropped (it never reaches the disk), one already in a group that hangs
is abandoned — its caller gets ``StorageStalled`` and ``on_stall`` tells the node, which stops
serving and gives its slots up (:mod:`node.storage_health`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path

import structlog

from node.commit_io import TEMP_PREFIX, FileTicket, Op, OpenLogs, OpKind, commit_group
from node.storage_errors import StorageBusy, StorageStalled

__all__ = [
    "LINGER_SECONDS",
    "MAX_GROUP_SIZE",
    "MAX_QUEUED_OPS",
    "TEMP_PREFIX",
    "FileTicket",
    "GroupCommitWriter",
    "StorageStalled",
]

_log = structlog.get_logger(__name__)

MAX_GROUP_SIZE = 512
"""Most operations committed together (a larger backlog is committed in several groups)."""
MAX_QUEUED_OPS = 65_536
"""Operations that may wait for the storage at once (see "Bounded in size")."""
LINGER_SECONDS = 0.05
"""How long appends that need not be durable wait for company before a group is committed."""


class GroupCommitWriter:
    """Queues durable operations under ``root`` and commits them in groups, one group at a
    time, on ``executor`` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        check: Callable[[Path], object],
        executor: Executor,
        timeout_seconds: float,
        on_stall: Callable[[], None] = lambda: None,
        max_queued: int = MAX_QUEUED_OPS,
        on_dropped: Callable[[], None] = lambda: None,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._root = root
        self._max_queued = max_queued
        self._on_dropped = on_dropped
        self._on_refused = on_refused
        self._check = check
        self._executor = executor
        self._timeout_seconds = timeout_seconds
        self._on_stall = on_stall
        self._queue: list[Op] = []
        self._logs = OpenLogs()
        self._committer: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._last_op: Op | None = None

    async def write(
        self, path: Path, data: bytes, *, precondition: Callable[[], None] | None = None
    ) -> None:
        """Replace ``path`` with ``data`` atomically and durably; returns once it is on disk.

        ``precondition`` runs in the worker thread just before the rename and may raise to
        refuse the write (an epoch check made as late as it can be)."""
        await self._queue_op(OpKind.REPLACE, path, data, is_durable=True, precondition=precondition)

    async def append(
        self,
        path: Path,
        data: bytes,
        *,
        precondition: Callable[[], None] | None = None,
        ticket: FileTicket | None = None,
    ) -> None:
        """Append ``data`` to ``path`` durably; returns once it is on disk. ``precondition``
        runs in the worker thread just before the write and may raise to refuse it; ``ticket``
        notes the file the record went to (see ``append_later``)."""
        await self._queue_op(
            OpKind.APPEND, path, data, is_durable=True, precondition=precondition, ticket=ticket
        )

    def append_later(self, path: Path, data: bytes, *, bound_to: FileTicket | None = None) -> None:
        """Queue ``data`` to be appended to ``path`` with the next group, without waiting
        (nor making it durable): see the module docstring. With ``bound_to``, only into the
        file that ticket's record went to: skipped when it was never written, or when the
        path names another file by then."""
        if len(self._queue) >= self._max_queued:
            self._on_dropped()
            return
        loop = asyncio.get_running_loop()
        op = Op(
            OpKind.APPEND,
            path,
            data,
            False,
            loop.create_future(),
            is_awaited=False,
            bound_to=bound_to,
        )
        self._queue.append(op)
        self._last_op = op
        if self._linger is None and (self._committer is None or self._committer.done()):
            self._linger = loop.call_later(LINGER_SECONDS, self._start_committing)

    async def flush(self) -> None:
        """Return once everything queued so far is written (before a read of the files), or
        the deadline passed."""
        last = self._last_op
        if last is None or last.done.done():
            return
        self._start_committing()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout_seconds):
                await asyncio.shield(last.done)  # a failure was the operation's own to report

    async def close(self, path: Path) -> None:
        """Make what was appended to ``path`` durable and close it."""
        await self._queue_op(OpKind.CLOSE, path, b"", is_durable=True)

    def queue_append(
        self, path: Path, data: bytes, *, precondition: Callable[[], None] | None = None
    ) -> Awaitable[None]:
        """Queue a durable append of ``data`` to ``path`` now, in order with everything queued
        before it; await the result to know it is on disk (see ``append``). Raises
        ``StorageBusy`` at once when the queue is full."""
        op = self._enqueue(OpKind.APPEND, path, data, is_durable=True, precondition=precondition)
        return self._wait(op)

    async def _queue_op(
        self,
        kind: OpKind,
        path: Path,
        data: bytes,
        *,
        is_durable: bool,
        precondition: Callable[[], None] | None = None,
        ticket: FileTicket | None = None,
    ) -> None:
        op = self._enqueue(
            kind, path, data, is_durable=is_durable, precondition=precondition, ticket=ticket
        )
        await self._wait(op)

    def _enqueue(
        self,
        kind: OpKind,
        path: Path,
        data: bytes,
        *,
        is_durable: bool,
        precondition: Callable[[], None] | None = None,
        ticket: FileTicket | None = None,
    ) -> Op:
        if kind is not OpKind.CLOSE and len(self._queue) >= self._max_queued:
            self._on_refused()
            raise StorageBusy(
                f"{len(self._queue)} writes wait for the storage already; {kind.value} "
                f"{path.name} refused, nothing written"
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        op = Op(kind, path, data, is_durable, done, precondition=precondition, ticket=ticket)
        self._queue.append(op)
        self._last_op = op
        self._start_committing()
        return op

    async def _wait(self, op: Op) -> None:
        done, kind, path = op.done, op.kind, op.path
        try:
            async with asyncio.timeout(self._timeout_seconds):
                await asyncio.shield(done)
        except TimeoutError:
            self._give_up(op)
            raise StorageStalled(
                f"storage did not answer within {self._timeout_seconds:g} s ({kind.value} "
                f"{path.name})"
            ) from None
        except asyncio.CancelledError:
            if not done.done() and op in self._queue:
                self._queue.remove(op)  # its caller left before it was written: never written
            raise

    def _give_up(self, op: Op) -> None:
        """``op`` passed its deadline: dropped when still queued, else abandoned in its group."""
        if op in self._queue:
            self._queue.remove(op)  # never written
        else:
            op.is_abandoned = True
        _log.error("storage_stalled", path=str(op.path), kind=op.kind.value)
        self._on_stall()

    def _start_committing(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._queue and (self._committer is None or self._committer.done()):
            self._committer = asyncio.create_task(self._commit_queued(), name="group-commit")

    def _next_group(self) -> list[Op]:
        group: list[Op] = []
        replaced: set[Path] = set()
        for op in self._queue[:MAX_GROUP_SIZE]:
            if op.kind is not OpKind.REPLACE and op.path in replaced:
                break  # it must land in the file as renamed: the next group
            if op.kind is OpKind.REPLACE:
                replaced.add(op.path)
            group.append(op)
        self._queue = self._queue[len(group) :]
        return group

    async def _commit_queued(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            group = self._next_group()
            try:
                await loop.run_in_executor(
                    self._executor, commit_group, group, self._check, self._logs
                )
            except BaseException as error:
                for op in group:
                    op.error = op.error or error
                raise
            finally:
                _settle(group)


def _settle(group: list[Op]) -> None:
    """Hand each operation's outcome to its caller."""
    for op in group:
        if op.done.done():
            continue  # its caller gave up waiting
        if op.error is None:
            op.done.set_result(None)
        elif not op.is_awaited:
            _log.warning("append_failed", path=str(op.path), error=repr(op.error))
            op.done.set_result(None)
        elif isinstance(op.error, asyncio.CancelledError):
            op.done.cancel()
        else:
            op.done.set_exception(op.error)
