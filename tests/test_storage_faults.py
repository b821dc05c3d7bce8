"""A failing or hanging disk, as the session storage sees it: every error is one a caller can
act on, nothing unacknowledged stays on disk, no call waits past its deadline, and a stale
owner's meta write is refused even when it was paused after its own check.

The disk's failures come from fault hooks in :mod:`node.commit_io` (the functions that
``fsync`` and ``fdatasync``) and :mod:`node.storage_files`: the files are real."""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import commit_io, storage
from node.storage import OutboxEntry, SessionMeta, SessionStorage
from node.storage_errors import StaleWrite, StorageFailed, StorageFull, StorageStalled
from registry import MessageStatus


def _entry(message_id: str, seq: int) -> OutboxEntry:
    return OutboxEntry(
        client_message_id=message_id,
        to="+14155550199",
        text=f"hello {seq}",
        status=MessageStatus.QUEUED,
        accepted_at_unix=time.time(),
        seq=seq,
    )


def _log(root: Path, session_id: str = "s-1") -> Path:
    return root / "workspace_ws-1" / session_id / "messages.log"


def _meta(epoch: int, **changes: object) -> SessionMeta:
    meta = SessionMeta(workspace_id="ws-1", session_id="s-1", node_id="node-1", state="ready")
    return meta.changed(owner_epoch=epoch, **changes)


class _Gate:
    """Blocks the storage thread that reaches it until released (a hung mount)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()

    def wait(self, *args: object) -> None:
        self.reached.set()
        self._open.wait(timeout=30)

    def release(self) -> None:
        self._open.set()


@pytest.fixture
def gate() -> Iterator[_Gate]:
    opened = _Gate()
    yield opened
    opened.release()  # never leave a storage thread hanging after the test


class TestFailingDisk:
    """ENOSPC and EIO answer with the right error and leave no record behind."""

    async def test_a_full_disk_refuses_the_send_and_keeps_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        disk = SessionStorage(tmp_path)
        await disk.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        before = _log(tmp_path).read_bytes()

        def full(descriptor: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(commit_io, "fdatasync_file", full)
        with pytest.raises(StorageFull, match="storage full"):
            await disk.append_accepted("ws-1", "s-1", _entry("m-2", 2))
        monkeypatch.undo()
        assert _log(tmp_path).read_bytes() == before  # the record was taken back
        assert [e.client_message_id for e in await disk.load_outbox("ws-1", "s-1")] == ["m-1"]

    async def test_an_io_error_fails_only_the_file_it_hit(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        disk = SessionStorage(tmp_path)
        for session_id in ("s-1", "s-2"):
            await disk.append_accepted("ws-1", session_id, _entry("m-0", 0))
        broken = _log(tmp_path, "s-1").resolve()
        real = commit_io.fdatasync_file

        def fails_for_s1(descriptor: int) -> None:
            if Path(f"/proc/self/fd/{descriptor}").resolve() == broken:
                raise OSError(errno.EIO, "Input/output error")
            real(descriptor)

        monkeypatch.setattr(commit_io, "fdatasync_file", fails_for_s1)
        results = await asyncio.gather(
            disk.append_accepted("ws-1", "s-1", _entry("m-1", 1)),
            disk.append_accepted("ws-1", "s-2", _entry("m-1", 1)),
            return_exceptions=True,
        )
        monkeypatch.undo()
        assert isinstance(results[0], StorageFailed) and results[1] is None, results
        s1 = await disk.load_outbox("ws-1", "s-1")
        s2 = await disk.load_outbox("ws-1", "s-2")
        assert [e.client_message_id for e in s1] == ["m-0"]
        assert [e.client_message_id for e in s2] == ["m-0", "m-1"]
        # The disk is back: the next append to the file that failed works.
        await disk.append_accepted("ws-1", "s-1", _entry("m-2", 2))
        s1 = await disk.load_outbox("ws-1", "s-1")
        assert [e.client_message_id for e in s1] == ["m-0", "m-2"]


class TestHungDisk:
    """No call waits past the storage's deadline, and the node is told."""

    async def test_a_hung_flush_answers_stalled_in_time(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate: _Gate
    ) -> None:
        stalls: list[float] = []
        disk = SessionStorage(
            tmp_path, timeout_seconds=0.3, on_stall=lambda: stalls.append(time.monotonic())
        )
        await disk.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        monkeypatch.setattr(commit_io, "fdatasync_file", gate.wait)
        started = time.monotonic()
        with pytest.raises(StorageStalled):
            await disk.append_accepted("ws-1", "s-1", _entry("m-2", 2))
        assert time.monotonic() - started < 2.0
        assert stalls, "the node was not told that its storage stalled"

    async def test_an_operation_still_queued_at_its_deadline_is_never_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate: _Gate
    ) -> None:
        disk = SessionStorage(tmp_path, timeout_seconds=0.3)
        await disk.append_accepted("ws-1", "s-1", _entry("m-0", 0))
        real = commit_io.fdatasync_file
        monkeypatch.setattr(commit_io, "fdatasync_file", gate.wait)
        first = asyncio.create_task(disk.append_accepted("ws-1", "s-1", _entry("m-1", 1)))
        await asyncio.to_thread(gate.reached.wait, 5)  # the first group hangs in its flush
        with pytest.raises(StorageStalled):
            await disk.append_accepted("ws-2", "s-9", _entry("m-queued", 1))
        with pytest.raises(StorageStalled):
            await first
        monkeypatch.setattr(commit_io, "fdatasync_file", real)
        gate.release()
        await disk.append_accepted("ws-1", "s-1", _entry("m-2", 2))  # the disk is back
        assert not (tmp_path / "workspace_ws-2").exists(), "a dropped operation was written"

    async def test_a_hung_read_answers_stalled_in_time(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate: _Gate
    ) -> None:
        disk = SessionStorage(tmp_path, timeout_seconds=0.3)
        await disk.save_meta(_meta(1))
        monkeypatch.setattr(storage, "read_json", gate.wait)
        with pytest.raises(StorageStalled):
            await disk.load_meta("ws-1", "s-1")


class TestStaleMetaWrites:
    """A meta write under an older epoch than the stored one is refused, late as it comes."""

    async def test_refused_when_the_stored_meta_is_newer(self, tmp_path: Path) -> None:
        disk = SessionStorage(tmp_path)
        await disk.save_meta(_meta(5))
        with pytest.raises(StaleWrite):
            await disk.save_meta(_meta(3, state="stopped"), fence_epoch=3)
        stored = await disk.load_meta("ws-1", "s-1")
        assert stored is not None and (stored.owner_epoch, stored.state) == (5, "ready")

    async def test_refused_when_a_newer_owner_wrote_while_the_writer_was_paused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate: _Gate
    ) -> None:
        former, newer = SessionStorage(tmp_path), SessionStorage(tmp_path)
        await former.save_meta(_meta(3))
        real = commit_io.fsync_file
        monkeypatch.setattr(commit_io, "fsync_file", gate.wait)
        # The former owner's write passed every check of its own and pauses in its flush…
        late = asyncio.create_task(former.save_meta(_meta(3, state="stopped"), fence_epoch=3))
        await asyncio.to_thread(gate.reached.wait, 5)
        monkeypatch.setattr(commit_io, "fsync_file", real)
        # …while a newer owner takes the session and writes its meta.
        await newer.save_meta(_meta(7))
        gate.release()
        with pytest.raises(StaleWrite):
            await late
        stored = await newer.load_meta("ws-1", "s-1")
        assert stored is not None and (stored.owner_epoch, stored.state) == (7, "ready")
