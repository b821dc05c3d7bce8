"""One bad session does not keep its slot down: a failover restores every session it can read,
quarantines those it cannot (logged, counted, in etcd), answers DATA_LOSS for them, and
``meshctl quarantine`` lists them."""

from __future__ import annotations

import json
from pathlib import Path

import aetcd
import grpc
import pytest

from protos import session_pb2
from registry import ClusterKeys, clear_pin, connect_etcd, quarantined, set_pin
from testkit import eventually, running_inprocess_mesh
from tests.test_meshctl import meshctl

pb = session_pb2
# Two workspaces, several sessions each: the bad ones share a slot's restore with good ones.
SESSIONS = [(f"ws-q{w}", f"s-{s}") for w in range(4) for s in range(3)]


class TestFailoverWithDamagedFiles:
    """node-1's lease is revoked; some of its sessions' files were damaged meanwhile."""

    async def test_the_rest_restore_and_the_damaged_are_quarantined(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            async with mesh.stub() as stub:
                for ws, sid in SESSIONS:
                    await stub.CreateSession(
                        pb.CreateSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                    )
            before = await mesh.wait_ready(SESSIONS)
            victim = "node-1"
            on_victim = sorted(key for key, node in before.items() if node == victim)
            if len(on_victim) < 3:
                pytest.skip(f"placement put only {len(on_victim)} sessions on {victim}")
            keys_on_victim = [_key(key) for key in on_victim]
            bad_meta, bad_credentials, *good = keys_on_victim

            etcd = await connect_etcd(etcd_url)
            keys = ClusterKeys(cluster_name)
            held = sorted({bad_meta[0], bad_credentials[0]})
            folder = mesh.storage
            try:
                # Damaged while nobody runs them: their workspaces are pinned to a node that
                # does not exist until the damage is done, so no restore can read the files
                # before it (a survivor acquires the victim's slots the moment its lease goes).
                for workspace_id in held:
                    await set_pin(etcd, keys, workspace_id, "nobody")
                await eventually(
                    lambda: _recorded_stopped(folder, [bad_meta, bad_credentials]),
                    timeout_seconds=10,
                    message="the damaged sessions stopped where they ran",
                )
                await etcd.revoke_lease(mesh.nodes[victim].heartbeat.lease_id)
                await eventually(
                    lambda: mesh.nodes[victim].manager.hosted_count == 0,
                    timeout_seconds=10,
                    message=f"{victim} fenced itself",
                )
                (folder / f"workspace_{bad_meta[0]}" / bad_meta[1] / "meta.json").write_text(
                    '{"workspace_id": "ws-q'  # torn
                )
                credentials = folder / f"workspace_{bad_credentials[0]}" / bad_credentials[1]
                (credentials / "credentials.json").write_text("[1, 2, 3]")  # not an object
                for workspace_id in held:
                    await clear_pin(etcd, keys, workspace_id)

                # Restored again (the victim hosts nothing since its fence): on a survivor,
                # or on the victim itself once it has a lease again and the ring hands its
                # slots back — which a loaded machine makes fast enough to see.
                await mesh.wait_ready([(ws, sid) for ws, sid in good])
                async with mesh.stub() as stub:
                    for ws, sid in (bad_meta, bad_credentials):
                        with pytest.raises(grpc.aio.AioRpcError) as raised:
                            await stub.GetSession(
                                pb.GetSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                            )
                        assert raised.value.code() == grpc.StatusCode.DATA_LOSS
                        assert "quarantined" in (raised.value.details() or "")

                await eventually(
                    lambda: _quarantined_count(etcd, keys, 2),
                    timeout_seconds=10,
                    message="both damaged sessions are recorded in etcd",
                )
            finally:
                await etcd.close()
            listed = (await meshctl(mesh, "quarantine", "--json")).json()
            by_session = {(s["workspace_id"], s["session_id"]): s for s in listed["sessions"]}
            assert set(by_session) == {bad_meta, bad_credentials}
            assert "meta.json" in by_session[bad_meta]["reason"]
            assert "credentials.json" in by_session[bad_credentials]["reason"]
            assert by_session[bad_meta]["node_id"]  # whichever node restored the slot last
            table = await meshctl(mesh, "quarantine")
            assert table.exit_code == 0 and bad_meta[1] in table.stdout


def _recorded_stopped(storage: Path, sessions: list[tuple[str, str]]) -> bool:
    """Whether each session's meta says it stopped (its node wrote its last meta)."""
    for workspace_id, session_id in sessions:
        meta = storage / f"workspace_{workspace_id}" / session_id / "meta.json"
        if json.loads(meta.read_bytes()).get("state") != "stopped":
            return False
    return True


def _key(account: str) -> tuple[str, str]:
    workspace_id, _, session_id = account.partition("/")
    return workspace_id, session_id


async def _quarantined_count(etcd: aetcd.Client, keys: ClusterKeys, count: int) -> bool:
    return len(await quarantined(etcd, keys)) >= count
