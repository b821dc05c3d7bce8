"""Taking a backup: the operator state from etcd, the accounts dump, then every session of the
storage tree (each at one moment, :mod:`backup.snapshot`) into one archive with its manifest;
encrypted, stored at the target, and older archives pruned if a retention is given.

The state is read before the storage, so the catalog may miss a workspace created meanwhile:
a restore catalogues every workspace the archive's storage holds (:mod:`backup.restore`)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backup.accounts_dump import dump_accounts
from backup.archive import ArchiveWriter
from backup.crypto import encrypt_file
from backup.manifest import (
    ACCOUNTS_NAME,
    OPERATOR_STATE_NAME,
    STORAGE_FOLDER,
    Manifest,
    WorkspaceCounts,
)
from backup.operator_state import export_state
from backup.snapshot import read_session, session_folders, workspace_folders
from backup.targets import StoredArchive, Target, archive_name, select_for_pruning
from node import WORKSPACE_FOLDER_PREFIX, summarize_session
from registry import ClusterKeys, EtcdTls, connect_etcd


@dataclass(frozen=True)
class BackupRequest:
    """What to back up and where."""

    storage_path: Path
    database_url: str
    etcd_endpoints: str
    cluster: str
    target: Target
    recipients: list[object] | None
    """age recipients (:func:`backup.crypto.recipients_of`); None: not encrypted."""
    etcd_tls: EtcdTls | None = None
    keep_hourly: int = 0
    keep_daily: int = 0
    """Retention: with either above 0, older archives of this cluster are pruned after."""


@dataclass(frozen=True)
class BackupResult:
    """What a backup wrote."""

    name: str
    size_bytes: int
    manifest: Manifest
    seconds: float
    pruned: list[str]


def mesh_version() -> str:
    """The installed sessionmesh version."""
    try:
        return importlib.metadata.version("sessionmesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def count_sessions(storage_path: Path) -> int:
    """How many session folders the tree holds (for a progress bar's total)."""
    return sum(1 for _, folder in workspace_folders(storage_path) for _ in session_folders(folder))


async def take_backup(
    request: BackupRequest, *, on_session: Callable[[str], None] = lambda _: None
) -> BackupResult:
    """Take one backup (see the module docstring); ``on_session(key)`` after each session."""
    started = time.monotonic()
    etcd = await connect_etcd(request.etcd_endpoints, tls=request.etcd_tls)
    try:
        state = await export_state(etcd, ClusterKeys(request.cluster))
    finally:
        await etcd.close()
    accounts, revision, rows = await asyncio.to_thread(dump_accounts, request.database_url)
    created_at = time.time()
    manifest = Manifest(
        cluster=request.cluster,
        created_at_unix=created_at,
        mesh_version=mesh_version(),
        schema_version=revision,
        operator_keys=len(state),
        accounts_rows=rows,
    )
    name = archive_name(request.cluster, created_at)
    with tempfile.TemporaryDirectory(prefix="sessionmesh-backup-") as scratch:
        plain = Path(scratch) / "archive.tar.gz"
        writer = ArchiveWriter(plain, manifest)
        await asyncio.to_thread(
            writer.add, OPERATOR_STATE_NAME, json.dumps(state, indent=0).encode()
        )
        await asyncio.to_thread(writer.add, ACCOUNTS_NAME, accounts)
        for workspace_id, workspace_folder in workspace_folders(request.storage_path):
            counts = manifest.workspaces.setdefault(workspace_id, WorkspaceCounts())
            for session_id, folder in session_folders(workspace_folder):
                session = await asyncio.to_thread(read_session, workspace_id, session_id, folder)
                prefix = f"{STORAGE_FOLDER}/{WORKSPACE_FOLDER_PREFIX}{workspace_id}/{session_id}"
                for relative, data in sorted(session.files.items()):
                    await asyncio.to_thread(writer.add, f"{prefix}/{relative}", data)
                summary = summarize_session(session.files)
                counts.sessions += 1
                counts.messages += summary.messages
                counts.pending += summary.pending
                if not session.is_settled:
                    manifest.unsettled_sessions.append(f"{workspace_id}/{session_id}")
                on_session(f"{workspace_id}/{session_id}")
        await asyncio.to_thread(writer.finish)
        stored = plain
        if request.recipients is not None:
            stored = Path(scratch) / name
            await asyncio.to_thread(encrypt_file, plain, stored, request.recipients)
        size = stored.stat().st_size
        await request.target.upload(stored, name)
    pruned: list[str] = []
    if request.keep_hourly > 0 or request.keep_daily > 0:
        pruned = await prune(
            request.target,
            cluster=request.cluster,
            keep_hourly=request.keep_hourly,
            keep_daily=request.keep_daily,
        )
    return BackupResult(
        name=name,
        size_bytes=size,
        manifest=manifest,
        seconds=time.monotonic() - started,
        pruned=pruned,
    )


async def prune(target: Target, *, cluster: str, keep_hourly: int, keep_daily: int) -> list[str]:
    """Delete the archives of ``cluster`` the retention does not keep; their names."""
    archives: list[StoredArchive] = [
        archive for archive in await target.list() if archive.cluster == cluster
    ]
    doomed = select_for_pruning(
        archives, keep_hourly=keep_hourly, keep_daily=keep_daily, now_unix=time.time()
    )
    for archive in doomed:
        await target.delete(archive.name)
    return [archive.name for archive in doomed]
