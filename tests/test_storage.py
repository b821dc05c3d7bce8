"""Session storage: atomic writes, no id escapes its folder, and what is written reads back."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from node import commit_io, group_commit
from node.daemon_pool import DaemonThreadPool
from node.message_log import DEDUPE_WINDOW_SECONDS
from node.storage import OutboxEntry, SessionMeta, SessionStorage
from node.storage_errors import StorageFailed
from registry import InvalidInput, MessageStatus
from testkit import eventually

BAD_IDS = ["../x", "a/b", "..", ".", "x" * 65, "", "ünïcode", "a\x00b", "/abs", "a b"]


def _all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def _meta(**changes: object) -> SessionMeta:
    base = SessionMeta(
        workspace_id="ws-1",
        session_id="s-1",
        phone_number="+14155550100",
        labels={"team": "sales"},
        node_id="node-1",
        state="ready",
        created_at_unix=1_700_000_000.5,
        updated_at_unix=1_700_000_001.25,
    )
    return base.changed(**changes)


NOW = time.time()
"""Entries are accepted "now": well inside the dedupe window a compaction keeps."""


def _entry(client_message_id: str, seq: int, status: str = "QUEUED") -> OutboxEntry:
    return OutboxEntry(
        client_message_id=client_message_id,
        to="+14155550199",
        text=f"hello {seq}",
        status=MessageStatus(status),
        accepted_at_unix=NOW + seq,
        seq=seq,
        accepted_by_node_id="node-1",
    )


class TestRoundTrips:
    """Meta, credentials and outbox entries read back as written."""

    async def test_meta_round_trip(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        meta = _meta(disconnect_reason="network", disconnected_at_unix=1_700_000_003.0)
        await storage.save_meta(meta)
        assert await storage.load_meta("ws-1", "s-1") == meta
        assert (tmp_path / "workspace_ws-1" / "s-1" / "meta.json").is_file()

    async def test_meta_overwrite_and_missing(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        await storage.save_meta(_meta())
        await storage.save_meta(_meta(state="stopped", deleted=True))
        loaded = await storage.load_meta("ws-1", "s-1")
        assert loaded is not None and loaded.deleted and loaded.state == "stopped"
        assert await storage.load_meta("ws-1", "nobody") is None

    async def test_credentials_round_trip_and_delete(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        assert await storage.load_credentials("ws-1", "s-1") is None
        credentials = {"token": "secret-token", "device": 3}
        await storage.save_credentials("ws-1", "s-1", credentials)
        assert await storage.load_credentials("ws-1", "s-1") == credentials
        await storage.delete_credentials("ws-1", "s-1")
        await storage.delete_credentials("ws-1", "s-1")  # twice: harmless
        assert await storage.load_credentials("ws-1", "s-1") is None

    async def test_outbox_in_seq_order_with_updates(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        for seq, client_message_id in enumerate(["m-c", "m-a", "m-b"], start=1):
            await storage.append_accepted("ws-1", "s-1", _entry(client_message_id, seq))
        storage.append_status("ws-1", "s-1", "m-a", MessageStatus.DELIVERED)
        storage.append_status("ws-1", "s-1", "m-a", MessageStatus.SENT)  # late: ignored
        entries = await storage.load_outbox("ws-1", "s-1")
        assert [entry.client_message_id for entry in entries] == ["m-c", "m-a", "m-b"]
        assert entries[1] == _entry("m-a", 2, status="DELIVERED")

    async def test_scans_and_size(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        await storage.save_meta(_meta())
        await storage.save_meta(_meta(session_id="s-2"))
        await storage.save_meta(_meta(workspace_id="ws-2", session_id="s-9"))
        await storage.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        assert await storage.list_sessions("ws-1") == ["s-1", "s-2"]
        assert await storage.list_sessions("ws-2") == ["s-9"]
        assert await storage.list_sessions("ws-3") == []
        expected = sum(path.stat().st_size for path in (tmp_path / "workspace_ws-1/s-1").rglob("*")
                       if path.is_file())  # fmt: skip
        assert await storage.size_bytes("ws-1", "s-1") == expected > 0

    async def test_empty_root(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path / "not-yet")
        assert await storage.list_sessions("ws-1") == []
        assert await storage.load_meta("ws-1", "s-1") is None


class TestAtomicWrites:
    """A write replaces the file whole and leaves no temp file behind."""

    async def test_no_temp_files_after_many_writes(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        for index in range(20):
            await storage.save_meta(_meta(updated_at_unix=float(index)))
            await storage.save_credentials("ws-1", "s-1", {"token": str(index)})
            await storage.append_accepted("ws-1", "s-1", _entry(f"m-{index}", index))
        await storage.rewrite_messages("ws-1", "s-1", await storage.load_outbox("ws-1", "s-1"))
        names = [path.name for path in _all_files(tmp_path)]
        assert sorted(names) == sorted(["meta.json", "credentials.json", "messages.log"])

    async def test_failed_write_keeps_the_old_file_and_no_temp(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage = SessionStorage(tmp_path)
        await storage.save_credentials("ws-1", "s-1", {"token": "old"})

        def broken_replace(source: str, target: str) -> None:
            raise OSError("disk gone")

        monkeypatch.setattr(os, "replace", broken_replace)
        with pytest.raises(StorageFailed, match="disk gone"):
            await storage.save_credentials("ws-1", "s-1", {"token": "new"})
        monkeypatch.undo()
        assert await storage.load_credentials("ws-1", "s-1") == {"token": "old"}
        assert [path.name for path in _all_files(tmp_path)] == ["credentials.json"]

    async def test_scans_skip_leftover_temp_files(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        await storage.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        folder = tmp_path / "workspace_ws-1" / "s-1"
        (folder / ".messages.log.abc.tmp").write_text('{"a": {"client_message_id": "m-2"')
        (folder / "outbox").mkdir()
        (folder / "outbox" / ".m-3.json.abc.tmp").write_text("{half a fi")
        entries = await storage.load_outbox("ws-1", "s-1")
        assert [entry.client_message_id for entry in entries] == ["m-1"]


class TestGroupCommit:
    """Writes queued together are committed together, each as if it were alone."""

    async def test_a_burst_lands_whole_in_several_groups(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        count = group_commit.MAX_GROUP_SIZE + 44  # more than one group
        entries = [(f"s-{index % 30}", _entry(f"m-{index}", index)) for index in range(count)]
        await asyncio.gather(
            *(storage.append_accepted("ws-1", session, entry) for session, entry in entries)
        )
        for session in {session for session, _ in entries}:
            stored = await storage.load_outbox("ws-1", session)
            wanted = [entry for name, entry in entries if name == session]
            assert stored == sorted(wanted, key=lambda entry: entry.seq)
        assert not [path for path in _all_files(tmp_path) if path.name.startswith(".")]

    async def test_of_two_queued_writes_to_one_file_the_later_wins(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        await asyncio.gather(
            *(storage.save_credentials("ws-1", "s-1", {"token": str(index)}) for index in range(5))
        )
        assert await storage.load_credentials("ws-1", "s-1") == {"token": "4"}

    async def test_a_refused_write_fails_alone(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        outside = tmp_path.parent / f"{tmp_path.name}-outside"
        outside.mkdir()
        (tmp_path / "workspace_ws-1").mkdir()
        (tmp_path / "workspace_ws-1" / "s-bad").symlink_to(outside)
        results = await asyncio.gather(
            storage.save_credentials("ws-1", "s-bad", {"token": "x"}),
            storage.save_credentials("ws-1", "s-good", {"token": "y"}),
            return_exceptions=True,
        )
        assert isinstance(results[0], InvalidInput)
        assert results[1] is None
        assert await storage.load_credentials("ws-1", "s-good") == {"token": "y"}
        assert list(outside.iterdir()) == []

    async def test_a_failed_flush_fails_the_write_and_keeps_the_old_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage = SessionStorage(tmp_path)
        await storage.save_credentials("ws-1", "s-1", {"token": "old"})

        def broken_fsync(descriptor: int) -> None:
            raise OSError(errno.EIO, "disk gone")

        monkeypatch.setattr(commit_io, "fsync_file", broken_fsync)
        results = await asyncio.gather(
            storage.save_credentials("ws-1", "s-1", {"token": "new"}),
            storage.save_credentials("ws-1", "s-2", {"token": "other"}),
            return_exceptions=True,
        )
        monkeypatch.undo()
        assert all(isinstance(result, StorageFailed) for result in results), results
        assert await storage.load_credentials("ws-1", "s-1") == {"token": "old"}
        assert await storage.load_credentials("ws-1", "s-2") is None
        assert [path.name for path in _all_files(tmp_path)] == ["credentials.json"]


class TestMessageLog:
    """The message log: appended, replayed, torn tails dropped, compacted, old format read."""

    def _log(self, root: Path) -> Path:
        return root / "workspace_ws-1" / "s-1" / "messages.log"

    async def test_a_torn_last_line_is_dropped_and_the_next_owner_starts_clean(
        self, tmp_path: Path
    ) -> None:
        storage = SessionStorage(tmp_path)
        await storage.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        await storage.close_messages("ws-1", "s-1")
        with self._log(tmp_path).open("ab") as log:  # a crash in the middle of an append
            log.write(b'{"a":{"client_message_id":"m-2","to":"+1')
        opened = await storage.open_messages("ws-1", "s-1")
        assert [entry.client_message_id for entry in opened] == ["m-1"]
        # The node that opened it appends to a file of its own: nothing glues onto the tear.
        await storage.append_accepted("ws-1", "s-1", _entry("m-3", 3))
        reloaded = await storage.load_outbox("ws-1", "s-1")
        assert [entry.client_message_id for entry in reloaded] == ["m-1", "m-3"]
        lines = self._log(tmp_path).read_bytes().splitlines()
        assert [json.loads(line)["a"]["client_message_id"] for line in lines] == ["m-1", "m-3"]

    async def test_a_former_owners_late_append_lands_in_a_file_nobody_reads(
        self, tmp_path: Path
    ) -> None:
        former, new = SessionStorage(tmp_path), SessionStorage(tmp_path)
        await former.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        entries = await new.open_messages("ws-1", "s-1")  # a new owner takes the session
        await former.append_accepted("ws-1", "s-1", _entry("m-late", 2))  # its old log file
        await new.append_accepted("ws-1", "s-1", _entry("m-2", 2))
        assert [entry.client_message_id for entry in entries] == ["m-1"]
        reloaded = await new.load_outbox("ws-1", "s-1")
        assert [entry.client_message_id for entry in reloaded] == ["m-1", "m-2"]

    async def test_compaction_keeps_every_id_but_drops_the_bodies_of_settled_messages(
        self, tmp_path: Path
    ) -> None:
        storage = SessionStorage(tmp_path)
        for seq in range(1, 51):
            await storage.append_accepted("ws-1", "s-1", _entry(f"m-{seq}", seq))
        for seq in range(1, 41):
            storage.append_status("ws-1", "s-1", f"m-{seq}", MessageStatus.READ)
        before = self._log(tmp_path).stat().st_size
        await storage.open_messages("ws-1", "s-1")  # compacts
        entries = await storage.load_outbox("ws-1", "s-1")
        assert [entry.seq for entry in entries] == list(range(1, 51))
        assert all(e.text == "" and e.to == "" for e in entries[:40])
        assert [e.text for e in entries[40:]] == [f"hello {seq}" for seq in range(41, 51)]
        assert all(e.status is MessageStatus.QUEUED for e in entries[40:])
        assert self._log(tmp_path).stat().st_size < before
        assert len(self._log(tmp_path).read_bytes().splitlines()) == 50

    async def test_compaction_forgets_settled_messages_past_the_dedupe_window(
        self, tmp_path: Path
    ) -> None:
        storage = SessionStorage(tmp_path)
        long_ago = time.time() - DEDUPE_WINDOW_SECONDS - 60
        old = [replace(_entry(f"old-{seq}", seq), accepted_at_unix=long_ago) for seq in (1, 2)]
        for entry in [*old, _entry("recent-3", 3)]:
            await storage.append_accepted("ws-1", "s-1", entry)
        for message_id in ("old-1", "recent-3"):
            storage.append_status("ws-1", "s-1", message_id, MessageStatus.DELIVERED)
        opened = await storage.open_messages("ws-1", "s-1")  # compacts
        # old-1 is settled and past the window: forgotten. old-2 never reached the network:
        # kept with its body however old. recent-3 is settled but recent: its id is kept.
        assert [(e.client_message_id, e.status) for e in opened] == [
            ("old-2", MessageStatus.QUEUED),
            ("recent-3", MessageStatus.DELIVERED),
        ]
        assert opened[0].text == "hello 2"
        reloaded = await storage.load_outbox("ws-1", "s-1")
        assert [e.client_message_id for e in reloaded] == ["old-2", "recent-3"]

    async def test_the_old_per_message_files_are_read_and_retired(self, tmp_path: Path) -> None:
        folder = tmp_path / "workspace_ws-1" / "s-1"
        (folder / "outbox").mkdir(parents=True)
        for seq, status in ((1, "READ"), (2, "QUEUED"), (3, "SENT")):
            entry = _entry(f"m-{seq}", seq, status=status)
            (folder / "outbox" / f"m-{seq}.json").write_text(json.dumps(asdict(entry)))
        storage = SessionStorage(tmp_path)
        storage.append_status("ws-1", "s-1", "m-2", MessageStatus.DELIVERED)  # no-op
        loaded = await storage.load_outbox("ws-1", "s-1")
        assert [(e.client_message_id, e.status) for e in loaded] == [
            ("m-1", MessageStatus.READ),
            ("m-2", MessageStatus.QUEUED),
            ("m-3", MessageStatus.SENT),
        ]
        opened = await storage.open_messages("ws-1", "s-1")
        assert [e.client_message_id for e in opened] == ["m-1", "m-2", "m-3"]
        assert not (folder / "outbox").exists()
        again = await storage.load_outbox("ws-1", "s-1")
        assert [(e.client_message_id, e.status) for e in again] == [
            (e.client_message_id, e.status) for e in loaded
        ]
        assert again[1].text == "hello 2"  # still to be delivered: its body is kept


class TestStatusAppends:
    """Statuses are queued without waiting and ride along with the next group of writes."""

    def _log(self, root: Path) -> Path:
        return root / "workspace_ws-1" / "s-1" / "messages.log"

    def _count_groups(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        sizes: list[int] = []
        real = commit_io.commit_group

        def counted(ops: list[object], *args: object) -> None:
            sizes.append(len(ops))
            real(ops, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(group_commit, "commit_group", counted)
        return sizes

    async def test_the_acks_of_a_burst_share_one_group(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage = SessionStorage(tmp_path)
        await storage.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        groups = self._count_groups(monkeypatch)
        for status in (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ):
            storage.append_status("ws-1", "s-1", "m-1", status)
        assert groups == []  # queued, nothing written yet
        before = self._log(tmp_path).read_bytes()
        await eventually(lambda: groups == [3], timeout_seconds=5)
        assert len(self._log(tmp_path).read_bytes().splitlines()) == 3 + len(before.splitlines())

    async def test_a_durable_write_takes_queued_statuses_along_at_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage = SessionStorage(tmp_path)
        await storage.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        groups = self._count_groups(monkeypatch)
        storage.append_status("ws-1", "s-1", "m-1", MessageStatus.DELIVERED)
        await storage.append_accepted("ws-1", "s-1", _entry("m-2", 2))
        assert groups == [2]
        lines = [json.loads(line) for line in self._log(tmp_path).read_bytes().splitlines()]
        assert lines[1] == {"s": ["m-1", "DELIVERED"]} and lines[2]["a"]["seq"] == 2

    async def test_a_read_sees_the_statuses_queued_before_it(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        await storage.append_accepted("ws-1", "s-1", _entry("m-1", 1))
        storage.append_status("ws-1", "s-1", "m-1", MessageStatus.READ)
        loaded = await storage.load_outbox("ws-1", "s-1")
        assert [entry.status for entry in loaded] == [MessageStatus.READ]

    async def test_a_failed_status_append_is_logged_not_raised(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage = SessionStorage(tmp_path)
        await storage.append_accepted("ws-1", "s-1", _entry("m-1", 1))

        def full_disk(op: object, *args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(commit_io, "_append", full_disk)
        with capture_logs() as logs:
            storage.append_status("ws-1", "s-1", "m-1", MessageStatus.SENT)
            await storage.close_messages("ws-1", "s-1")  # commits the queued status
        assert [log["event"] for log in logs] == ["append_failed"]
        monkeypatch.undo()
        loaded = await storage.load_outbox("ws-1", "s-1")
        assert [entry.status for entry in loaded] == [MessageStatus.QUEUED]


class TestIdsCannotEscape:
    """Ids that could name a path outside the tree are refused before any file is touched."""

    @pytest.mark.parametrize("bad_id", BAD_IDS)
    async def test_bad_workspace_id(self, tmp_path: Path, bad_id: str) -> None:
        storage = SessionStorage(tmp_path / "root")
        with pytest.raises(InvalidInput, match="workspace_id"):
            await storage.save_meta(_meta(workspace_id=bad_id))
        with pytest.raises(InvalidInput, match="workspace_id"):
            await storage.save_credentials(bad_id, "s-1", {"token": "t"})
        assert not (tmp_path / "root").exists()
        assert _all_files(tmp_path) == []

    @pytest.mark.parametrize("bad_id", BAD_IDS)
    async def test_bad_session_id(self, tmp_path: Path, bad_id: str) -> None:
        storage = SessionStorage(tmp_path / "root")
        with pytest.raises(InvalidInput, match="session_id"):
            await storage.save_meta(_meta(session_id=bad_id))
        with pytest.raises(InvalidInput, match="session_id"):
            await storage.load_outbox("ws-1", bad_id)
        assert not (tmp_path / "root").exists()

    @pytest.mark.parametrize("bad_id", BAD_IDS)
    async def test_bad_client_message_id(self, tmp_path: Path, bad_id: str) -> None:
        storage = SessionStorage(tmp_path / "root")
        with pytest.raises(InvalidInput, match="client_message_id"):
            await storage.append_accepted("ws-1", "s-1", _entry(bad_id, 1))
        assert not (tmp_path / "root").exists()

    def test_paths_stay_under_root(self, tmp_path: Path) -> None:
        storage = SessionStorage(tmp_path)
        path = storage.session_dir("ws-1", "s-1")
        assert path.is_relative_to(tmp_path.resolve())
        assert path == tmp_path.resolve() / "workspace_ws-1" / "s-1"

    async def test_symlinked_session_folder_is_refused(self, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (tmp_path / "root" / "workspace_ws-1").mkdir(parents=True)
        (tmp_path / "root" / "workspace_ws-1" / "s-1").symlink_to(outside)
        storage = SessionStorage(tmp_path / "root")
        with pytest.raises(InvalidInput, match="leaves the storage root"):
            await storage.save_credentials("ws-1", "s-1", {"token": "t"})
        assert list(outside.iterdir()) == []


class TestStorageThreads:
    """Storage runs on daemon threads (``node.daemon_pool``): never joined at exit, so a hung
    mount cannot keep a stopped node alive; results and errors reach their callers."""

    async def test_results_errors_and_daemon_threads(self) -> None:
        pool = DaemonThreadPool(2, thread_name_prefix="storage-test")
        loop = asyncio.get_running_loop()
        names = await asyncio.gather(
            *(loop.run_in_executor(pool, lambda: threading.current_thread().name) for _ in range(8))
        )
        assert set(names) <= {"storage-test_0", "storage-test_1"}
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("storage-test"))
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(pool, lambda: 1 // 0)
        pool.shutdown(wait=True)
        with pytest.raises(RuntimeError):
            pool.submit(print)
