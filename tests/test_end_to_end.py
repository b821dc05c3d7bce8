"""The mesh end to end, through the gateway: sessions land by workspace, reach READY,
send messages, and come back READY without a QR when their node restarts."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

from protos import session_pb2
from registry import slot_of
from testkit import InProcessMesh, eventually, running_inprocess_mesh

READY = session_pb2.SESSION_STATE_READY

WORKSPACES = [f"ws-{i}" for i in range(20)]
SESSIONS = [(WORKSPACES[i % 20], f"s-{i}") for i in range(50)]


async def _all_ready(
    mesh: InProcessMesh, sessions: list[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Wait until every session is READY through the gateway; return where each one runs."""
    placed: dict[tuple[str, str], str] = {}
    async with mesh.stub() as stub:

        async def ready() -> bool:
            for key in sessions:
                if key in placed:
                    continue
                got = await stub.GetSession(
                    session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1]),
                    timeout=5,
                )
                if got.state != READY:
                    return False
                placed[key] = got.node_id
            return True

        await eventually(ready, timeout_seconds=30, message="all sessions READY")
    return placed


class TestEndToEnd:
    """Fifty sessions over twenty workspaces on a two-node mesh."""

    async def test_sessions_spread_by_workspace_send_and_survive_a_restart(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            async with mesh.stub() as stub:
                created = await asyncio.gather(
                    *(
                        stub.CreateSession(
                            session_pb2.CreateSessionRequest(
                                workspace_id=ws, session_id=sid, phone_number="+14155550100"
                            ),
                            timeout=10,
                        )
                        for ws, sid in SESSIONS
                    )
                )
            assert len(created) == 50
            placed = await _all_ready(mesh, SESSIONS)

            # Every workspace's sessions sit on one node, the one its slot routes to.
            nodes_of: dict[str, set[str]] = defaultdict(set)
            for (ws, _), node_id in placed.items():
                nodes_of[ws].add(node_id)
            assert all(len(nodes) == 1 for nodes in nodes_of.values()), nodes_of
            for ws, nodes in nodes_of.items():
                owner = mesh.gateway.router.ring.node_for_slot(slot_of(ws))
                assert owner is not None and nodes == {owner.node_id}
            # Both nodes get some.
            assert set(placed.values()) == {"node-1", "node-2"}

            # Messages send: each accepted once, delivered once.
            async with mesh.stub() as stub:
                answers = await asyncio.gather(
                    *(
                        stub.SendMessage(
                            session_pb2.SendMessageRequest(
                                workspace_id=ws,
                                session_id=sid,
                                client_message_id=f"m-{sid}",
                                to="+14155550199",
                                text=f"hello from {sid}",
                            ),
                            timeout=10,
                        )
                        for ws, sid in SESSIONS
                    )
                )
            assert {a.node_id for a in answers} == {"node-1", "node-2"}
            assert not any(a.duplicate for a in answers)

            def all_delivered() -> bool:
                return all(
                    mesh.simnet.delivered_ids(f"{ws}/{sid}")[f"m-{sid}"] == 1
                    for ws, sid in SESSIONS
                )

            await eventually(all_delivered, timeout_seconds=15, message="every message delivered")

            # Restart node-1: its sessions come back READY, restored from storage, no QR.
            on_node_1 = [key for key, node_id in placed.items() if node_id == "node-1"]
            qr_before = {key: mesh.simnet.qr_issued(f"{key[0]}/{key[1]}") for key in on_node_1}
            await mesh.stop_node("node-1")
            await mesh.start_node("node-1")
            # node-2 serves them until its reconciler hands the slots back: wait for that.
            await mesh.wait_placed(WORKSPACES)
            replaced = await _all_ready(mesh, on_node_1)
            assert set(replaced.values()) == {"node-1"}
            assert {
                key: mesh.simnet.qr_issued(f"{key[0]}/{key[1]}") for key in on_node_1
            } == qr_before, "a restored session showed a new QR code"
            assert mesh.simnet.replaced_events == []
            # Nothing was delivered twice across the restart.
            for ws, sid in SESSIONS:
                assert mesh.simnet.delivered_ids(f"{ws}/{sid}")[f"m-{sid}"] == 1
