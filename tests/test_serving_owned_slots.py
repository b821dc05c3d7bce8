"""Nodes serve only the slots they own in etcd: disjoint owners that follow placement, a redirect
with the owner for a call to the wrong node, one owner key per slot, and a catalog that follows
creates and deletes."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import node.moves
from node.slot_table import Unit
from protos import session_pb2, session_pb2_grpc
from registry import (
    OWNER_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    catalog_counts_of,
    connect_etcd,
    slot_of,
)
from testkit import InProcessMesh, eventually, running_inprocess_mesh

pb = session_pb2
WORKSPACES = [f"ws-{i}" for i in range(12)]


async def _create_all(mesh: InProcessMesh) -> None:
    async with mesh.stub() as stub:
        for ws in WORKSPACES:
            await stub.CreateSession(
                pb.CreateSessionRequest(workspace_id=ws, session_id="s-1"), timeout=10
            )
        await stub.CreateSession(
            pb.CreateSessionRequest(workspace_id="ws-0", session_id="s-2"), timeout=10
        )


class TestOwnership:
    """Two nodes, twelve workspaces, sessions created through the gateway."""

    async def test_owners_follow_placement_and_the_wrong_node_redirects(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            await _create_all(mesh)
            await mesh.wait_placed(WORKSPACES)
            owned = {i: set(s.slots.slots()) for i, s in mesh.nodes.items()}
            assert not owned["node-1"] & owned["node-2"]
            owners = mesh.owners()
            assert {owners[slot_of(ws)] for ws in WORKSPACES} == {"node-1", "node-2"}
            # Every node's view agrees: one key per slot, held under the owner's epoch.
            for server in mesh.nodes.values():
                for slot, node_id in owners.items():
                    held = server.ownership_view.owner_of_slot(slot)
                    mine = mesh.nodes[node_id].slots.slots()[slot]
                    assert held == mine, (slot, held, mine)

            ws = WORKSPACES[0]
            owner_id = owners[slot_of(ws)]
            owner = mesh.nodes[owner_id]
            other = next(s for i, s in mesh.nodes.items() if i != owner_id)
            async with grpc.aio.insecure_channel(other.address) as channel:
                stub = session_pb2_grpc.SessionServiceStub(channel)
                try:
                    await stub.GetSession(
                        pb.GetSessionRequest(workspace_id=ws, session_id="s-1"), timeout=10
                    )
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
                    trailing: dict[str, str] = dict(error.trailing_metadata() or ())  # type: ignore[arg-type]
                    assert trailing[OWNER_METADATA_KEY] == f"{owner_id}@{owner.address}"
                else:
                    raise AssertionError("the non-owner served the call")
            assert other.manager.session_count(ws) == 0
            assert owner.manager.session_count(ws) == 2

    async def test_catalog_counts_follow_creates_and_deletes(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            await _create_all(mesh)
            client = await connect_etcd(etcd_url)
            keys = mesh.gateway_keys
            try:

                async def two_sessions() -> bool:
                    got = await catalog_counts_of(client, keys, slot_of("ws-0"))
                    return got["ws-0"] == 2

                # The second create's count goes out with the next catalog flush.
                await eventually(two_sessions, message="catalog count 2 after the creates")
                async with mesh.stub() as stub:
                    await stub.DeleteSession(
                        pb.DeleteSessionRequest(workspace_id="ws-0", session_id="s-2"), timeout=10
                    )
                    # Messages do not touch the catalog; a repeated create does not either.
                    await stub.CreateSession(
                        pb.CreateSessionRequest(workspace_id="ws-0", session_id="s-1")
                    )

                async def one_left() -> bool:
                    got = await catalog_counts_of(client, keys, slot_of("ws-0"))
                    return got["ws-0"] == 1

                await eventually(one_left, message="catalog count 1 after the delete")
                for ws in WORKSPACES[1:]:
                    counts = await catalog_counts_of(client, keys, slot_of(ws))
                    assert counts[ws] == 1
            finally:
                await client.close()


class TestBusySlot:
    """A call that waits too long for its slot's restore gets a retryable answer."""

    async def test_waiting_past_the_limit_is_unavailable_not_internal(
        self,
        tmp_path: Path,
        etcd_url: str,
        cluster_name: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(node.moves, "ON_DEMAND_TIMEOUT_SECONDS", 0.2)
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name, node_count=1) as mesh:
            await _create_all(mesh)
            server = mesh.nodes["node-1"]
            ws = WORKSPACES[0]
            # As if a restore of the slot were still running: its lock is held.
            async with (
                server.slots.step(Unit.slot(slot_of(ws))),
                grpc.aio.insecure_channel(server.address) as channel,
            ):
                stub = session_pb2_grpc.SessionServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.GetSession(
                        pb.GetSessionRequest(workspace_id=ws, session_id="s-1"), timeout=10
                    )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
            retry_hint: dict[str, str] = dict(raised.value.trailing_metadata() or ())  # type: ignore[arg-type]
            assert RETRY_AFTER_METADATA_KEY in retry_hint
            # Once the slot is free, the same call is served.
            async with mesh.stub() as gateway_stub:
                got = await gateway_stub.GetSession(
                    pb.GetSessionRequest(workspace_id=ws, session_id="s-1"), timeout=10
                )
            assert got.session_id == "s-1"
