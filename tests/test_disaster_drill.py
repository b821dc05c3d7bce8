"""The checklist's disaster drill, automated: sessions with messages pending, a backup to a
real S3-compatible server (SeaweedFS), then the storage tree, the accounts DB and etcd's data
all deleted; a restore from S3 and nodes started brings every session back READY without a QR
code, and every pending message is delivered exactly once (simnet's record). The recovery
time — restore started to every session READY — is printed (the checklist asks for under 30
minutes; the target here is under 60 seconds on 2 cores). Reduced in ``make test``; the issue's
1,000 sessions in 100 workspaces with ``SESSIONMESH_FULL=1``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from backup import generate_key_file
from protos import session_pb2, session_pb2_grpc
from testkit import (
    LoadReport,
    MeshSettings,
    ProcessMesh,
    account_of,
    assert_exactly_once,
    assert_never_two_live,
    is_full_size,
    plan_sessions,
    running_process_mesh,
    running_seaweedfs,
    start_sessions,
    wait_all_delivered,
    wait_all_ready,
)

BUCKET = "sessionmesh-backups"


def _sizes() -> tuple[int, int, int]:
    """(nodes, workspaces, sessions)."""
    return (4, 100, 1000) if is_full_size() else (2, 20, 200)


def _meshctl(environment: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "client.meshctl", *args, "--json"],
        capture_output=True, text=True, timeout=300, check=False, env=environment,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document: dict[str, object] = json.loads(done.stdout)
    return document


async def _send_one_each(mesh: ProcessMesh, sessions: list[tuple[str, str]]) -> LoadReport:
    """One message to every session, all acknowledged (on disk in its outbox)."""
    report = LoadReport()
    limit = asyncio.Semaphore(32)
    async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)

        async def send(key: tuple[str, str]) -> None:
            message_id = f"drill-{key[1]}"
            request = session_pb2.SendMessageRequest(
                workspace_id=key[0], session_id=key[1], client_message_id=message_id,
                to="+14155550100", text="sent before the disaster",
            )  # fmt: skip
            async with limit:
                await stub.SendMessage(request, timeout=20)
            report.acked.setdefault(account_of(key), set()).add(message_id)

        await asyncio.gather(*(send(key) for key in sessions))
    return report


async def _wipe_etcd(mesh: ProcessMesh) -> None:
    await mesh.stop_etcd()
    for member in mesh.etcd_cluster.members:
        shutil.rmtree(member.data_dir)
    await mesh.start_etcd()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_everything_lost_then_restored_from_s3(tmp_path: Path) -> None:
    node_count, workspace_count, session_count = _sizes()
    sessions = plan_sessions(workspace_count=workspace_count, session_count=session_count)
    key_file = tmp_path / "backup.key"
    generate_key_file(key_file)
    settings = MeshSettings(node_count=node_count, lease_ttl_seconds=2)
    async with (
        running_seaweedfs(tmp_path / "s3") as s3,
        running_process_mesh(tmp_path / "mesh", settings) as mesh,
    ):
        await s3.create_bucket(BUCKET)
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "AWS_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "SESSION_STORAGE_PATH": str(mesh.state_dir / "sessions"),
            "DATABASE_URL": mesh.database_url,
            "ETCD_ENDPOINTS": mesh.etcd_url,
            "SESSIONMESH_CLUSTER": mesh.settings.cluster,
            "BACKUP_KEY_FILE": str(key_file),
        }
        await start_sessions(mesh, sessions, timeout_seconds=120)
        before = await mesh.simnet_stats(include_ids=False)
        qr_before = {
            account_of(k): before["accounts"][account_of(k)]["qr_issued"] for k in sessions
        }

        # The network stalls: every message sent now is acknowledged (on disk) and pending.
        simnet_pid = mesh.process_id("simnet")
        os.kill(simnet_pid, signal.SIGSTOP)
        try:
            report = await _send_one_each(mesh, sessions)
            await mesh.kill_all_nodes()
            backed_up = _meshctl(environment, "backup", "--to", f"s3://{BUCKET}/drill")
        finally:
            os.kill(simnet_pid, signal.SIGCONT)
        manifest = backed_up["manifest"]
        assert isinstance(manifest, dict)
        assert manifest["sessions"] == session_count
        assert manifest["pending"] == session_count, "every message sent was pending"

        # The disaster: storage, accounts DB and etcd's data gone.
        shutil.rmtree(mesh.state_dir / "sessions")
        for suffix in ("", "-wal", "-shm"):
            (mesh.state_dir / f"accounts.db{suffix}").unlink(missing_ok=True)
        await _wipe_etcd(mesh)
        assert not (mesh.state_dir / "sessions").exists()

        started = time.monotonic()
        restored = _meshctl(environment, "restore", f"s3://{BUCKET}/drill/{backed_up['archive']}")
        assert restored["sessions"] == session_count
        restore_seconds = time.monotonic() - started
        await mesh.restart_gateway()
        await asyncio.gather(*(mesh.start_node(f"node-{n + 1}") for n in range(node_count)))
        await wait_all_ready(mesh.gateway_address, sessions, timeout_seconds=180)
        recovery_seconds = time.monotonic() - started

        stats = await wait_all_delivered(mesh, report, timeout_seconds=60)
        assert_exactly_once(stats, report)
        assert_never_two_live(stats, sessions)
        after = await mesh.simnet_stats(include_ids=False)
        new_qr = {
            account: after["accounts"][account]["qr_issued"] - count
            for account, count in qr_before.items()
            if after["accounts"][account]["qr_issued"] != count
        }
        assert not new_qr, f"sessions asked for a QR code again: {new_qr}"
        print(
            f"disaster drill: {session_count} sessions in {workspace_count} workspaces on "
            f"{node_count} nodes, {session_count} messages pending; backup to S3 "
            f"{backed_up['size_bytes']:,} bytes in {backed_up['seconds']} s; recovery (restore "
            f"from S3 + nodes started + every session READY) {recovery_seconds:.1f} s, of which "
            f"the restore {restore_seconds:.1f} s; every pending message delivered once, no QR"
        )
