"""``meshctl backup`` and ``meshctl restore``: one consistent, encrypted snapshot of the
session storage, the cluster's operator state in etcd and the accounts DB, to a folder or an
S3-compatible store; checked, listed, pruned, and restored whole or per workspace
(:mod:`backup`). These commands read the storage, etcd and the DB themselves: run them where
the shared storage is mounted, with the node's ``SESSION_STORAGE_PATH``, ``DATABASE_URL`` and
``ETCD_ENDPOINTS``."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from backup import (
    BackupRequest,
    Manifest,
    RestoreRequest,
    count_sessions,
    fetch_archive,
    generate_key_file,
    parse_target,
    prune,
    recipients_of,
    restore_backup,
    take_backup,
    verify_archive,
)
from client.meshctl_app import JsonOption, app, err, fail, out
from client.meshctl_etcd import (
    DEFAULT_ETCD,
    ClusterOption,
    EtcdCacertOption,
    EtcdCertOption,
    EtcdKeyOption,
    EtcdOption,
    etcd_tls,
)
from registry import DEFAULT_CLUSTER, MeshError
from registry.accounts import DEFAULT_DATABASE_URL

backups = typer.Typer(
    help="Back up the mesh: storage, operator state and accounts DB in one encrypted archive.",
    invoke_without_command=True,
)
app.add_typer(backups, name="backup")

StorageOption = Annotated[
    Path,
    typer.Option(
        "--storage", envvar="SESSION_STORAGE_PATH", help="The shared session storage folder."
    ),
]
DatabaseOption = Annotated[
    str, typer.Option("--database-url", envvar="DATABASE_URL", help="The accounts DB.")
]
KeyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        envvar="BACKUP_KEY_FILE",
        help="The age key file (meshctl backup keygen): encrypts to its public key, decrypts.",
        show_default=False,
    ),
]
DEFAULT_STORAGE = Path("sessions")


def _progress(*, enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    )


@contextmanager
def _operator_errors() -> Iterator[None]:
    try:
        yield
    except MeshError as error:
        fail(error.message)


def _manifest_summary(manifest: Manifest) -> dict[str, Any]:
    return {
        "cluster": manifest.cluster,
        "created_at_unix": manifest.created_at_unix,
        "mesh_version": manifest.mesh_version,
        "schema_version": manifest.schema_version,
        "files": len(manifest.files),
        "operator_keys": manifest.operator_keys,
        "accounts_rows": manifest.accounts_rows,
        "unsettled_sessions": manifest.unsettled_sessions,
        **manifest.totals(),
        "per_workspace": {w: asdict(c) for w, c in sorted(manifest.workspaces.items())},
    }


@backups.callback()
def backup(
    ctx: typer.Context,
    *,
    to: Annotated[
        str,
        typer.Option(
            "--to", envvar="BACKUP_TARGET", help="A folder, or s3://bucket/prefix (AWS_* vars)."
        ),
    ] = "backups",
    storage: StorageOption = DEFAULT_STORAGE,
    database_url: DatabaseOption = DEFAULT_DATABASE_URL,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
    key_file: KeyFileOption = None,
    recipients: Annotated[
        list[str] | None,
        typer.Option("--recipient", help="Also encrypt to this age recipient (age1…), repeatable."),
    ] = None,
    no_encrypt: Annotated[
        bool, typer.Option("--no-encrypt", help="Write the archive in clear (credentials too!).")
    ] = False,
    keep_hourly: Annotated[
        int, typer.Option("--keep-hourly", min=0, help="Then keep the newest of N hours, prune.")
    ] = 0,
    keep_daily: Annotated[
        int, typer.Option("--keep-daily", min=0, help="…and the newest of M days.")
    ] = 0,
    etcd_cacert: EtcdCacertOption = "",
    etcd_cert: EtcdCertOption = "",
    etcd_key: EtcdKeyOption = "",
    as_json: JsonOption = False,
) -> None:
    """Take one backup now (the subcommands check, list, prune and make keys)."""
    if ctx.invoked_subcommand is not None:
        return
    tls = etcd_tls(etcd_cacert, etcd_cert, etcd_key)
    with _operator_errors():
        target = parse_target(to)
        encrypt_to = None if no_encrypt else recipients_of(key_file, recipients or [])
        request = BackupRequest(
            storage_path=storage,
            database_url=database_url,
            etcd_endpoints=etcd,
            etcd_tls=tls,
            cluster=cluster,
            target=target,
            recipients=encrypt_to,
            keep_hourly=keep_hourly,
            keep_daily=keep_daily,
        )
        with _progress(enabled=not as_json) as progress:
            task = progress.add_task("backing up sessions", total=count_sessions(storage))
            result = asyncio.run(
                take_backup(request, on_session=lambda _key: progress.advance(task))
            )
    document = {
        "archive": result.name,
        "target": target.describe(),
        "size_bytes": result.size_bytes,
        "encrypted": encrypt_to is not None,
        "seconds": round(result.seconds, 3),
        "pruned": result.pruned,
        "manifest": _manifest_summary(result.manifest),
    }
    if as_json:
        print(json.dumps(document, indent=2))
        return
    totals = result.manifest.totals()
    out.print(
        f"{result.name} → {target.describe()}: {totals['sessions']} sessions in "
        f"{totals['workspaces']} workspaces, {totals['messages']} messages "
        f"({totals['pending']} pending), {result.size_bytes:,} bytes, "
        f"{'encrypted' if encrypt_to is not None else 'NOT encrypted'}, "
        f"{result.seconds:.1f} s",
        highlight=False,
    )
    if result.manifest.unsettled_sessions:
        err.print(
            f"{len(result.manifest.unsettled_sessions)} sessions changed through every read and "
            "were taken as last read",
            highlight=False,
        )
    for name in result.pruned:
        out.print(f"pruned {name}", highlight=False)


@contextmanager
def _local_copy(archive: str) -> Iterator[Path]:
    """``archive`` as a local file: itself, or fetched from S3 into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="sessionmesh-fetch-") as scratch:
        with _operator_errors():
            local = asyncio.run(fetch_archive(archive, Path(scratch)))
        yield local


ArchiveArgument = Annotated[
    str, typer.Argument(help="The archive: a file, or s3://bucket/prefix/NAME.smbk.")
]


@backups.command("verify")
def verify(
    archive: ArchiveArgument, key_file: KeyFileOption = None, as_json: JsonOption = False
) -> None:
    """Check an archive whole — decryption, every file against the manifest — restoring nothing."""
    with _local_copy(archive) as local, _operator_errors():
        manifest = verify_archive(local, key_file=key_file)
    if as_json:
        print(
            json.dumps(
                {"archive": archive, "ok": True, "manifest": _manifest_summary(manifest)}, indent=2
            )
        )
        return
    totals = manifest.totals()
    out.print(
        f"{archive}: OK — {len(manifest.files)} files match the manifest; {totals['sessions']} "
        f"sessions in {totals['workspaces']} workspaces, {totals['pending']} messages pending",
        highlight=False,
    )


@backups.command("keygen")
def keygen(
    out_file: Annotated[Path, typer.Option("--out", help="Write the new key file here (0600).")],
    as_json: JsonOption = False,
) -> None:
    """Make a new age key file for --key-file; keep a copy away from the backups."""
    with _operator_errors():
        public = generate_key_file(out_file)
    if as_json:
        print(json.dumps({"key_file": str(out_file), "recipient": public}))
        return
    out.print(f"wrote {out_file}; its public key (a --recipient): {public}", highlight=False)


@backups.command("list")
def list_archives(
    target: Annotated[str, typer.Argument(help="A folder, or s3://bucket/prefix.")],
    as_json: JsonOption = False,
) -> None:
    """The archives a target holds, newest first."""
    with _operator_errors():
        archives = asyncio.run(parse_target(target).list())
    archives.sort(key=lambda archive: archive.modified_unix, reverse=True)
    if as_json:
        print(json.dumps([asdict(archive) for archive in archives], indent=2))
        return
    for archive in archives:
        out.print(f"{archive.name}  {archive.size_bytes:,} bytes", highlight=False)


@backups.command("prune")
def prune_archives(
    target: Annotated[str, typer.Argument(help="A folder, or s3://bucket/prefix.")],
    keep_hourly: Annotated[int, typer.Option("--keep-hourly", min=0)] = 24,
    keep_daily: Annotated[int, typer.Option("--keep-daily", min=0)] = 7,
    cluster: ClusterOption = DEFAULT_CLUSTER,
    as_json: JsonOption = False,
) -> None:
    """Delete the archives of the cluster that the retention does not keep."""
    with _operator_errors():
        pruned = asyncio.run(
            prune(
                parse_target(target),
                cluster=cluster,
                keep_hourly=keep_hourly,
                keep_daily=keep_daily,
            )
        )
    if as_json:
        print(json.dumps({"pruned": pruned}))
        return
    out.print(f"pruned {len(pruned)} archives", highlight=False)


@app.command("restore")
def restore(
    archive: ArchiveArgument,
    *,
    workspaces: Annotated[
        list[str] | None,
        typer.Option("--workspace", help="Restore only this workspace (repeatable)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore into a running mesh: stop its sessions of those workspaces first.",
        ),
    ] = False,
    storage: StorageOption = DEFAULT_STORAGE,
    database_url: DatabaseOption = DEFAULT_DATABASE_URL,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
    key_file: KeyFileOption = None,
    etcd_cacert: EtcdCacertOption = "",
    etcd_cert: EtcdCertOption = "",
    etcd_key: EtcdKeyOption = "",
    as_json: JsonOption = False,
) -> None:
    """Restore a backup (checked whole first: a bad archive changes nothing)."""
    tls = etcd_tls(etcd_cacert, etcd_cert, etcd_key)
    with _local_copy(archive) as local, _operator_errors():
        request = RestoreRequest(
            archive=local,
            storage_path=storage,
            database_url=database_url,
            etcd_endpoints=etcd,
            etcd_tls=tls,
            cluster=cluster,
            key_file=key_file,
            workspaces=set(workspaces) if workspaces else None,
            force=force,
        )
        with _progress(enabled=not as_json) as progress:
            task = progress.add_task("restoring", total=None)
            result = asyncio.run(
                restore_backup(
                    request,
                    on_progress=lambda step, done, total: progress.update(
                        task, description=step, completed=done, total=total or None
                    ),
                )
            )
    document = {
        "archive": archive,
        "workspaces": result.workspaces,
        "sessions": result.sessions,
        "operator_keys": result.operator_keys,
        "accounts_rows": result.accounts_rows,
        "held_on": result.held_on,
        "left_untouched": result.left_untouched,
        "seconds": round(result.seconds, 3),
    }
    if as_json:
        print(json.dumps(document, indent=2))
        return
    out.print(
        f"restored {result.sessions} sessions in {len(result.workspaces)} workspaces, "
        f"{result.operator_keys} etcd keys, {result.accounts_rows} accounts rows in "
        f"{result.seconds:.1f} s; start (or undrain) the nodes: every session comes back READY",
        highlight=False,
    )
    if result.left_untouched:
        err.print(
            f"not in the archive, left as they are: {', '.join(result.left_untouched[:10])}",
            highlight=False,
        )
