"""Self-fencing: a node whose lease is revoked from outside stops all its sessions at once, and
the survivors restore them; never two live connections for one account."""

from __future__ import annotations

from pathlib import Path

from protos import session_pb2
from registry import connect_etcd
from testkit import eventually, running_inprocess_mesh

pb = session_pb2
SESSIONS = [(f"ws-{i}", f"s-{i}") for i in range(10)]


class TestRevokedLease:
    """Revoke node-1's lease behind its back."""

    async def test_node_stops_its_sessions_and_survivors_take_them(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            async with mesh.stub() as stub:
                for ws, sid in SESSIONS:
                    await stub.CreateSession(
                        pb.CreateSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                    )
            before = await mesh.wait_ready(SESSIONS)
            victim = mesh.nodes["node-1"]
            on_victim = {acc for acc, node_id in before.items() if node_id == "node-1"}
            assert on_victim and victim.manager.hosted_count == len(on_victim)

            client = await connect_etcd(etcd_url)
            try:
                await client.revoke_lease(victim.heartbeat.lease_id)
            finally:
                await client.close()

            await eventually(
                lambda: victim.manager.hosted_count == 0,
                timeout_seconds=5,
                message="node-1 fenced itself",
            )
            after = await mesh.wait_ready(SESSIONS)
            assert set(after) == set(before)
            # Never two live connections for one account: the fence came before the restore.
            assert mesh.simnet.replaced_events == []
            for account in before:
                assert mesh.simnet.max_concurrent_live.get(account, 0) <= 1, account
            # Once its lease is back, node-1 takes its placement share again, still cleanly.
            await mesh.wait_placed([ws for ws, _ in SESSIONS])
            await mesh.wait_ready(SESSIONS)
            assert mesh.simnet.replaced_events == []
