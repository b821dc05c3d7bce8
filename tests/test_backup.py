"""Backups and restores (``meshctl backup``, ``meshctl restore``): an archive taken while a
client sends is consistent per session; a damaged, truncated, wrongly keyed or foreign archive
is refused with nothing changed; one workspace restores alone; a running mesh is not touched
without --force. The disaster drill (to S3) is ``test_disaster_drill.py``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from sqlmodel import Session, select

from backup import BackupRequest, generate_key_file, parse_target, recipients_of, take_backup
from backup.accounts_dump import dump_accounts, parse_accounts, restore_accounts
from backup.archive import open_archive
from node.event_log import parse_events
from protos import session_pb2, session_pb2_grpc
from registry.accounts import WhatsappAccount, make_engine
from testkit import (
    LoadClient,
    MeshSettings,
    ProcessMesh,
    plan_sessions,
    running_process_mesh,
    start_sessions,
    wait_all_ready,
)

SESSIONS = plan_sessions(workspace_count=4, session_count=16)


def meshctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run meshctl; the completed process (exit 0 asserted unless ``check`` is False)."""
    done = subprocess.run(
        [sys.executable, "-m", "client.meshctl", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def mesh_flags(mesh: ProcessMesh) -> list[str]:
    """Where meshctl backup and restore find the mesh's storage, DB and etcd."""
    return [
        "--storage", str(mesh.state_dir / "sessions"),
        "--database-url", mesh.database_url,
        "--etcd", mesh.etcd_url,
        "--cluster", mesh.settings.cluster,
    ]  # fmt: skip


def tree_digest(root: Path) -> str:
    """One digest of every file under ``root`` (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


async def stop_all_nodes(mesh: ProcessMesh) -> None:
    """SIGTERM every node (each drains and revokes its lease: etcd lists none after)."""
    for node_id in list(mesh.running_nodes):
        assert await mesh.stop_node(node_id) == 0


class TestConsistentWhileServing:
    """A backup taken while a client sends: every session in it is one moment's."""

    @pytest.mark.timeout(180)
    async def test_each_session_is_whole_and_holds_what_was_acknowledged_before(
        self, tmp_path: Path
    ) -> None:
        key_file = tmp_path / "backup.key"
        generate_key_file(key_file)
        async with running_process_mesh(tmp_path / "mesh", MeshSettings(node_count=2)) as mesh:
            await start_sessions(mesh, SESSIONS)
            async with LoadClient(mesh.gateway_address, SESSIONS, worker_count=8) as load:
                await load.wait_for_acks(100)
                acked_before = {account: set(ids) for account, ids in load.report.acked.items()}
                result = await take_backup(
                    BackupRequest(
                        storage_path=mesh.state_dir / "sessions",
                        database_url=mesh.database_url,
                        etcd_endpoints=mesh.etcd_url,
                        cluster=mesh.settings.cluster,
                        target=parse_target(str(tmp_path / "backups")),
                        recipients=recipients_of(key_file, []),
                    )
                )
                await load.wait_for_acks(50)  # the mesh served on through the backup
            assert not load.report.failures, load.report.failure_summary()
        staging = tmp_path / "staging"
        staging.mkdir()
        manifest = open_archive(tmp_path / "backups" / result.name, staging, key_file=key_file)
        assert manifest.totals()["sessions"] == len(SESSIONS)
        for workspace_id, session_id in SESSIONS:
            folder = staging / "storage" / f"workspace_{workspace_id}" / session_id
            meta = json.loads((folder / "meta.json").read_bytes())
            assert meta["session_id"] == session_id
            log = (
                (folder / "messages.log").read_bytes()
                if (folder / "messages.log").exists()
                else b""
            )
            assert not log or log.endswith(b"\n"), "a torn line in the archive"
            logged = {
                json.loads(line)["a"]["client_message_id"]
                for line in log.splitlines()
                if b'"a"' in line
            }
            missing = acked_before.get(f"{workspace_id}/{session_id}", set()) - logged
            assert not missing, (
                f"{workspace_id}/{session_id} lacks acknowledged {sorted(missing)[:3]}"
            )
            events = folder / "events.log"
            if events.exists():
                data = events.read_bytes()
                assert data.endswith(b"\n")
                sequences = [event.sequence for event in parse_events(data)]
                assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
        print(
            f"backup while serving: {result.manifest.totals()}, "
            f"{len(result.manifest.unsettled_sessions)} sessions taken as last read, "
            f"{result.seconds:.2f} s"
        )


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


class TestBadArchives:
    """A damaged, truncated, wrongly keyed or foreign archive: verify and restore refuse it
    with a clear message, and nothing on disk, in etcd or in the DB changes."""

    @pytest.mark.timeout(180)
    async def test_each_is_refused_and_nothing_changes(self, tmp_path: Path) -> None:
        key_file, other_key = tmp_path / "backup.key", tmp_path / "other.key"
        generate_key_file(key_file)
        generate_key_file(other_key)
        async with running_process_mesh(tmp_path / "mesh", MeshSettings(node_count=1)) as mesh:
            await start_sessions(mesh, SESSIONS[:4])
            flags = mesh_flags(mesh)
            taken = meshctl(
                "backup", "--to", str(tmp_path / "backups"), "--key-file", str(key_file),
                *flags, "--json",
            )  # fmt: skip
            archive = tmp_path / "backups" / json.loads(taken.stdout)["archive"]
            await stop_all_nodes(mesh)
            good = archive.read_bytes()
            foreign = tmp_path / "foreign.tar.gz"
            with tarfile.open(foreign, "w:gz") as tar:
                tar.add(key_file, arcname="../../etc/evil")
            cases = {
                "one flipped byte": (_flip_byte(good, len(good) // 2), key_file),
                "truncated": (good[: len(good) * 2 // 3], key_file),
                "wrong key": (good, other_key),
                "foreign tar": (foreign.read_bytes(), key_file),
                "not an archive": (b"PK\x03\x04 a zip, say" * 100, key_file),
            }
            storage = mesh.state_dir / "sessions"
            before = tree_digest(storage)
            etcd_before = await mesh.etcd.get_prefix(mesh.keys.root) if mesh.etcd else []
            db_before = (mesh.state_dir / "accounts.db").read_bytes()
            for case, (data, key) in cases.items():
                bad = tmp_path / f"bad-{case.replace(' ', '-')}.smbk"
                bad.write_bytes(data)
                checked = meshctl("backup", "verify", str(bad), "--key-file", str(key), check=False)
                assert checked.returncode == 1, (case, checked.stdout, checked.stderr)
                assert "error:" in checked.stderr and "Traceback" not in checked.stderr, case
                restored = meshctl("restore", str(bad), "--key-file", str(key), *flags, check=False)
                assert restored.returncode == 1, (case, restored.stdout, restored.stderr)
                print(f"{case}: {' '.join(restored.stderr.split())[:160]}")
            assert tree_digest(storage) == before
            assert not (tmp_path / "etc").exists()
            etcd_after = await mesh.etcd.get_prefix(mesh.keys.root) if mesh.etcd else []
            assert [(i.key, i.value) for i in etcd_after] == [(i.key, i.value) for i in etcd_before]
            assert (mesh.state_dir / "accounts.db").read_bytes() == db_before
            verified = meshctl(
                "backup", "verify", str(archive), "--key-file", str(key_file), "--json"
            )
            assert json.loads(verified.stdout)["manifest"]["sessions"] == 4


class TestOneWorkspace:
    """A restore of one workspace brings it back as it was and leaves the others alone; a
    running mesh is not touched without --force."""

    @pytest.mark.timeout(180)
    async def test_it_comes_back_and_the_others_stay(self, tmp_path: Path) -> None:
        key_file = tmp_path / "backup.key"
        generate_key_file(key_file)
        restored_ws, other_ws = "ws-0", "ws-1"
        ours = [key for key in SESSIONS if key[0] == restored_ws]
        theirs = [key for key in SESSIONS if key[0] == other_ws]
        async with running_process_mesh(tmp_path / "mesh", MeshSettings(node_count=2)) as mesh:
            await start_sessions(mesh, ours + theirs)
            flags = mesh_flags(mesh)
            taken = meshctl(
                "backup", "--to", str(tmp_path / "backups"), "--key-file", str(key_file),
                *flags, "--json",
            )  # fmt: skip
            archive = tmp_path / "backups" / json.loads(taken.stdout)["archive"]
            # After the backup: ours are deleted, theirs get a new session.
            await _delete_sessions(mesh, ours)
            await start_sessions(mesh, [(other_ws, "s-new")])
            refused = meshctl(
                "restore", str(archive), "--workspace", restored_ws, "--key-file", str(key_file),
                *flags, check=False,
            )  # fmt: skip
            assert refused.returncode == 1 and "is running" in refused.stderr, refused.stderr
            await stop_all_nodes(mesh)
            other_folder = mesh.state_dir / "sessions" / f"workspace_{other_ws}"
            other_before = tree_digest(other_folder)
            done = meshctl(
                "restore", str(archive), "--workspace", restored_ws, "--key-file", str(key_file),
                *flags, "--json",
            )  # fmt: skip
            assert json.loads(done.stdout)["sessions"] == len(ours)
            assert tree_digest(other_folder) == other_before
            for node_id in ("node-1", "node-2"):
                await mesh.start_node(node_id)
            await wait_all_ready(
                mesh.gateway_address, ours + theirs + [(other_ws, "s-new")], timeout_seconds=60
            )


async def _delete_sessions(mesh: ProcessMesh, sessions: list[tuple[str, str]]) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        for workspace_id, session_id in sessions:
            await stub.DeleteSession(
                session_pb2.DeleteSessionRequest(workspace_id=workspace_id, session_id=session_id),
                timeout=10,
            )


class TestForcedRestore:
    """--force restores into a running mesh: the restored workspaces' sessions are stopped
    first (pinned to a node that does not exist), then given back: every session READY."""

    @pytest.mark.timeout(180)
    async def test_the_mesh_is_drained_restored_and_serves_again(self, tmp_path: Path) -> None:
        key_file = tmp_path / "backup.key"
        generate_key_file(key_file)
        sessions = SESSIONS[:8]
        async with running_process_mesh(tmp_path / "mesh", MeshSettings(node_count=2)) as mesh:
            await start_sessions(mesh, sessions)
            flags = mesh_flags(mesh)
            taken = meshctl(
                "backup", "--to", str(tmp_path / "backups"), "--key-file", str(key_file),
                *flags, "--json",
            )  # fmt: skip
            archive = tmp_path / "backups" / json.loads(taken.stdout)["archive"]
            done = meshctl(
                "restore", str(archive), "--force", "--key-file", str(key_file), *flags, "--json"
            )
            document = json.loads(done.stdout)
            assert sorted(document["held_on"]) == ["node-1", "node-2"]
            assert document["sessions"] == len(sessions)
            assert mesh.etcd is not None
            assert not await mesh.etcd.get_prefix(mesh.keys.pins_prefix), "a workspace left held"
            await wait_all_ready(mesh.gateway_address, sessions, timeout_seconds=60)


class TestAccountsDump:
    """The accounts dump restores on every database the mesh runs on: all rows, or one
    workspace's (the others untouched), owner epochs cleared."""

    def test_rows_come_back_as_they_were(self, database_url: str) -> None:
        stamp = datetime(2026, 12, 7, 3, 0, 0)
        rows = [
            WhatsappAccount(
                workspace_id=f"ws-{n % 2}", session_id=f"s-{n}", status="ready",
                owner_epoch=40 + n, instance_migration_count=n,
                disconnect_details="a\\nb ü" if n == 1 else None,
                disconnected_at=stamp if n == 2 else None,
                created_at=stamp, updated_at=stamp,
            )
            for n in range(4)
        ]  # fmt: skip
        engine = make_engine(database_url)
        with Session(engine) as session:
            session.add_all(rows)
            session.commit()
        dump, revision, count = dump_accounts(database_url)
        assert count == 4 and revision
        with Session(engine) as session:  # after the backup: ws-0 changes, ws-1 gains a row
            for row in session.exec(select(WhatsappAccount)):
                if row.workspace_id == "ws-0":
                    session.delete(row)
            session.add(WhatsappAccount(workspace_id="ws-1", session_id="s-new"))
            session.commit()
        restore_accounts(database_url, parse_accounts(dump), workspaces={"ws-0"})
        with Session(engine) as session:
            back = {row.session_id: row for row in session.exec(select(WhatsappAccount))}
        engine.dispose()
        assert sorted(back) == ["s-0", "s-1", "s-2", "s-3", "s-new"]
        assert back["s-2"].disconnected_at == stamp and back["s-2"].owner_epoch == 0
        assert back["s-0"].instance_migration_count == 0 and back["s-0"].created_at == stamp
        assert back["s-1"].owner_epoch == 41, "another workspace's row is left as it is"
        assert back["s-1"].disconnect_details == "a\\nb ü"
        restore_accounts(database_url, parse_accounts(dump))  # all of it: as at the backup
        engine = make_engine(database_url)
        with Session(engine) as session:
            every = sorted(row.session_id for row in session.exec(select(WhatsappAccount)))
        engine.dispose()
        assert every == ["s-0", "s-1", "s-2", "s-3"]
