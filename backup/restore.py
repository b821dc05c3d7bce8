"""Restoring a backup: the archive is fetched, decrypted, checked against its manifest and
staged before anything changes (:func:`backup.archive.open_archive`). Then, on a mesh that is
not running — or, with ``force``, on a running one, once it has stopped its sessions of the
restored workspaces (:func:`_hold`) — each workspace's folder is replaced whole (written beside
it, then swapped in by renames), the accounts rows and the operator state are replaced, and
every restored workspace is catalogued. The nodes that start (or, on a running mesh, find the
workspaces given back) restore every session READY from its credentials, without a QR code,
and deliver the messages still pending. Owner epochs are cleared in the restored metas and
rows: a restored etcd counts revisions from 1 again.

Workspaces on disk that the archive does not hold are left as they are (a restore never
deletes what it did not bring back); they are named in the result."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aetcd

from backup.accounts_dump import parse_accounts, restore_accounts
from backup.archive import open_archive
from backup.manifest import ACCOUNTS_NAME, OPERATOR_STATE_NAME, STORAGE_FOLDER, Manifest
from backup.operator_state import import_state, parse_state
from backup.snapshot import tree_stamps, workspace_folders
from backup.targets import parse_target
from node import META_FILE, WORKSPACE_FOLDER_PREFIX, without_owner_epoch
from registry import (
    ClusterKeys,
    EtcdTls,
    InvalidInput,
    Unavailable,
    connect_etcd,
    update_catalog_counts,
)

Progress = Callable[[str, int, int], None]
"""Told each step: what it is, and how far along (done, total; 0, 0: no count)."""
HOLD_NODE = "sessionmesh-restore-hold"
"""The node a forced restore pins its workspaces to while it works: no node has this id, so
their sessions stop and none starts them."""
HOLD_TIMEOUT_SECONDS = 120.0
"""How long a forced restore waits for a running mesh to stop the workspaces' sessions."""
HOLD_SETTLE_SECONDS = 1.0
"""A held workspace's folder must stay unchanged this long (the last writes of a stop)."""


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore, and where."""

    archive: Path
    """The archive, fetched to a local file."""
    storage_path: Path
    database_url: str
    etcd_endpoints: str
    cluster: str
    key_file: Path | None
    workspaces: set[str] | None = None
    """Only these workspaces; None: everything."""
    force: bool = False
    """Restore into a running mesh: its sessions of the restored workspaces are stopped first
    (see :func:`_hold`), started again from the restored state after."""
    etcd_tls: EtcdTls | None = None


@dataclass
class RestoreResult:
    """What a restore did."""

    manifest: Manifest
    workspaces: list[str] = field(default_factory=list)
    sessions: int = 0
    operator_keys: int = 0
    accounts_rows: int = 0
    held_on: list[str] = field(default_factory=list)
    """The running nodes a forced restore stopped the workspaces on (empty: none ran)."""
    left_untouched: list[str] = field(default_factory=list)
    """Workspaces on disk that the archive does not hold."""
    seconds: float = 0.0


def verify_archive(archive: Path, *, key_file: Path | None) -> Manifest:
    """Check ``archive`` whole (decryption, every member against the manifest) without
    restoring anything; its manifest (blocking: use in a thread)."""
    with tempfile.TemporaryDirectory(prefix="sessionmesh-verify-") as staging:
        return open_archive(archive, Path(staging), key_file=key_file)


def _chosen_workspaces(manifest: Manifest, wanted: set[str] | None) -> list[str]:
    if wanted is None:
        return sorted(manifest.workspaces)
    missing = sorted(wanted - set(manifest.workspaces))
    if missing:
        raise InvalidInput(f"the archive holds no workspace {', '.join(missing)}")
    return sorted(wanted)


def _place_workspace(staged: Path, root: Path, workspace_id: str) -> int:
    """Swap the staged folder of one workspace into the tree; its session count."""
    folder_name = f"{WORKSPACE_FOLDER_PREFIX}{workspace_id}"
    source = staged / STORAGE_FOLDER / folder_name
    incoming = root / f".{folder_name}.restoring-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, incoming)
    sessions = 0
    for meta in incoming.glob(f"*/{META_FILE}"):
        meta.write_bytes(without_owner_epoch(meta.read_bytes()))
        sessions += 1
    _sync_tree(incoming)
    target = root / folder_name
    outgoing = root / f".{folder_name}.replaced-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.replace(target, outgoing)
    os.replace(incoming, target)
    _sync_folder(root)
    shutil.rmtree(outgoing, ignore_errors=True)
    return sessions


def _sync_tree(folder: Path) -> None:
    for directory, _subfolders, names in os.walk(folder):
        for name in names:
            descriptor = os.open(Path(directory) / name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _sync_folder(Path(directory))


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def _live_nodes(client: aetcd.Client, keys: ClusterKeys) -> list[str]:
    return sorted(
        item.key[len(keys.nodes_prefix) :].decode(errors="replace")
        for item in await client.get_prefix(keys.nodes_prefix, keys_only=True)
    )


def _is_quiet(root: Path, workspace_id: str) -> bool:
    """Whether every session of the workspace is recorded stopped (or was never written)."""
    folder = root / f"{WORKSPACE_FOLDER_PREFIX}{workspace_id}"
    for meta in folder.glob(f"*/{META_FILE}"):
        try:
            record = json.loads(meta.read_bytes())
        except (OSError, ValueError):
            return False
        if record.get("state") != "stopped" and not record.get("deleted", False):
            return False
    return True


async def _hold(
    client: aetcd.Client,
    keys: ClusterKeys,
    root: Path,
    workspaces: list[str],
    on_progress: Progress,
) -> dict[str, bytes | None]:
    """Stop the running mesh serving ``workspaces``: each is pinned to ``HOLD_NODE``, which no
    node is, so its owner stops its sessions and nobody starts them; wait until every session
    is recorded stopped and its folder is still. Their previous pins."""
    previous: dict[str, bytes | None] = {}
    for workspace_id in workspaces:
        held = await client.get(keys.pin(workspace_id))
        previous[workspace_id] = None if held is None else held.value
        await client.put(keys.pin(workspace_id), HOLD_NODE.encode())
    deadline = time.monotonic() + HOLD_TIMEOUT_SECONDS
    stamps: dict[str, dict[str, tuple[int, int, int]]] = {}
    while True:
        busy = [w for w in workspaces if not await asyncio.to_thread(_is_quiet, root, w)]
        now = {
            w: await asyncio.to_thread(tree_stamps, root / f"{WORKSPACE_FOLDER_PREFIX}{w}")
            for w in workspaces
        }
        if not busy and now == stamps:
            return previous
        stamps = now
        on_progress("stopping the running sessions", len(workspaces) - len(busy), len(workspaces))
        if time.monotonic() > deadline:
            await _release(client, keys, previous)
            raise Unavailable(
                f"{len(busy)} workspaces kept running {HOLD_TIMEOUT_SECONDS:.0f} s after they "
                f"were pinned away (e.g. {', '.join(busy[:3])}): nothing was restored"
            )
        await asyncio.sleep(HOLD_SETTLE_SECONDS)


async def _release(
    client: aetcd.Client, keys: ClusterKeys, previous: dict[str, bytes | None]
) -> None:
    """Put back the pins :func:`_hold` replaced (a restore that did not get that far)."""
    for workspace_id, pin in previous.items():
        if pin is None:
            await client.delete(keys.pin(workspace_id))
        else:
            await client.put(keys.pin(workspace_id), pin)


async def restore_backup(
    request: RestoreRequest, *, on_progress: Progress = lambda _step, _done, _total: None
) -> RestoreResult:
    """Restore (see the module docstring)."""
    started = time.monotonic()
    root = request.storage_path
    with tempfile.TemporaryDirectory(prefix="sessionmesh-restore-") as scratch:
        staged = Path(scratch)
        on_progress("checking the archive", 0, 0)
        manifest = await asyncio.to_thread(
            open_archive, request.archive, staged, key_file=request.key_file
        )
        workspaces = _chosen_workspaces(manifest, request.workspaces)
        state = parse_state((staged / OPERATOR_STATE_NAME).read_bytes())
        rows = parse_accounts((staged / ACCOUNTS_NAME).read_bytes())
        result = RestoreResult(manifest=manifest, workspaces=workspaces)
        keys = ClusterKeys(request.cluster)
        etcd = await connect_etcd(request.etcd_endpoints, tls=request.etcd_tls)
        try:
            live = await _live_nodes(etcd, keys)
            if live and not request.force:
                raise InvalidInput(
                    f"the mesh is running ({', '.join(live)}): stop it, or restore with --force "
                    "(which stops the restored workspaces' sessions first)"
                )
            held: dict[str, bytes | None] = {}
            if live:
                held = await _hold(etcd, keys, root, workspaces, on_progress)
                result.held_on = live
            try:
                await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
                for done, workspace_id in enumerate(workspaces):
                    on_progress("restoring workspaces", done, len(workspaces))
                    result.sessions += await asyncio.to_thread(
                        _place_workspace, staged, root, workspace_id
                    )
                wanted = None if request.workspaces is None else set(workspaces)
                on_progress("restoring the accounts DB", 0, 0)
                result.accounts_rows = await asyncio.to_thread(
                    restore_accounts, request.database_url, rows, workspaces=wanted
                )
                # Last: replacing the pins lets a running mesh start the restored sessions.
                on_progress("restoring the operator state", 0, 0)
                counts = {w: manifest.workspaces[w].sessions for w in workspaces}
                await update_catalog_counts(etcd, keys, counts)
                result.operator_keys = await import_state(etcd, keys, state, workspaces=wanted)
            except BaseException:
                if held:
                    await _release(etcd, keys, held)
                raise
        finally:
            await etcd.close()
    result.left_untouched = sorted(
        workspace_id
        for workspace_id, _ in workspace_folders(root)
        if workspace_id not in manifest.workspaces
    )
    result.seconds = time.monotonic() - started
    return result


async def fetch_archive(archive: str, scratch: Path) -> Path:
    """``archive`` as a local file: a path as it is, or an ``s3://bucket/prefix/NAME`` object
    downloaded into ``scratch``."""
    if archive.startswith("s3://"):
        location, _, name = archive.rpartition("/")
        if not name or location == "s3:/":
            raise InvalidInput(f"{archive!r} names no archive: s3://bucket/prefix/NAME.smbk")
        local = scratch / name
        await parse_target(location).download(name, local)
        return local
    path = Path(archive)
    if not await asyncio.to_thread(path.is_file):
        raise InvalidInput(f"{archive} is not a file")
    return path
