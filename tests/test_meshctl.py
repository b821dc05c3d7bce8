"""``meshctl`` run as a real subprocess against an in-process mesh: JSON on every command,
tables for humans, intent written to etcd, clear errors and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import pytest

from protos import session_pb2
from registry import DEFAULT_SLOT_COUNT, ClusterKeys, OwnershipView, slot_of
from registry.accounts import WhatsappAccount
from testkit import InProcessMesh, eventually, running_inprocess_mesh

ROOT = Path(__file__).resolve().parent.parent
NODE_IDS = ["node-1", "node-2"]


@dataclass(frozen=True)
class Result:
    """What one meshctl run printed and how it exited."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as JSON (fails the test with stderr when the run failed)."""
        assert self.exit_code == 0, self.stderr
        return json.loads(self.stdout)


async def meshctl(mesh: InProcessMesh, *args: str) -> Result:
    """Run ``python -m client.meshctl`` against the mesh's gateway, without blocking the loop
    the mesh runs on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client.meshctl",
        *args,
        cwd=ROOT,
        env={**os.environ, "MESHCTL_GATEWAY": mesh.gateway.address, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def owner_id(view: OwnershipView, workspace_id: str) -> str | None:
    """The node that holds the slot of ``workspace_id`` in ``view``, if any."""
    owner = view.owner_of_slot(slot_of(workspace_id))
    return None if owner is None else owner.node_id


@pytest.fixture
async def mesh(tmp_path: Path, etcd_url: str, cluster_name: str) -> AsyncIterator[InProcessMesh]:
    """Two real nodes behind a gateway."""
    async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name, node_count=2) as running:
        yield running


class TestReadCommands:
    """Every read command answers in JSON, and ``nodes`` draws a table for humans."""

    async def test_reads_describe_the_running_mesh(self, mesh: InProcessMesh) -> None:
        nodes = (await meshctl(mesh, "nodes", "--json")).json()
        assert [node["node_id"] for node in nodes["nodes"]] == NODE_IDS
        assert nodes["slot_count"] == DEFAULT_SLOT_COUNT
        assert all(node["state"] == "active" for node in nodes["nodes"])

        ring = (await meshctl(mesh, "ring", "--json")).json()
        assert [member["node_id"] for member in ring["members"]] == NODE_IDS
        assert sum(member["ring_slot_count"] for member in ring["members"]) == DEFAULT_SLOT_COUNT
        assert all(member["weight"] == mesh.max_sessions for member in ring["members"])

        where = (await meshctl(mesh, "where", "ws-1", "--json")).json()
        assert where["slot"] == slot_of("ws-1")
        assert where["routed_node_id"] in NODE_IDS
        assert where["pinned_node_id"] == ""

        health = (await meshctl(mesh, "health", "--json")).json()
        assert {node["node_id"]: node["is_reachable"] for node in health["nodes"]} == {
            node_id: True for node_id in NODE_IDS
        }
        assert all(node["capacity"] == mesh.max_sessions for node in health["nodes"])

        plan = (await meshctl(mesh, "rebalance", "--dry-run", "--json")).json()
        assert plan["dry_run"] is True
        assert plan["slot_move_count"] == len(plan["moves"])
        assert plan["workspace_count"] == sum(len(move["workspace_ids"]) for move in plan["moves"])

    async def test_nodes_prints_a_table_with_the_node_ids(self, mesh: InProcessMesh) -> None:
        result = await meshctl(mesh, "nodes")
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.splitlines()
        for node_id in NODE_IDS:
            assert any(node_id in line and "active" in line for line in lines), result.stdout
        assert "owned slots" in result.stdout
        assert "━" in result.stdout or "─" in result.stdout  # drawn as a table


class TestWriteCommands:
    """drain and migrate record the operator's intent in etcd; mistakes get clear errors."""

    async def test_drain_and_migrate_write_intent(
        self, mesh: InProcessMesh, etcd: aetcd.Client, cluster_name: str
    ) -> None:
        keys = ClusterKeys(cluster_name)
        pinned = (await meshctl(mesh, "migrate", "ws-7", "--to", "node-1", "--json")).json()
        assert (pinned["workspace_id"], pinned["target_node_id"]) == ("ws-7", "node-1")
        pin = await etcd.get(keys.pin("ws-7"))
        assert pin is not None and b"node-1" in pin.value

        drained = (await meshctl(mesh, "drain", "node-2", "--json")).json()
        assert drained["node_id"] == "node-2"
        assert await etcd.get(keys.drain("node-2")) is not None

        (await meshctl(mesh, "undrain", "node-2", "--json")).json()
        assert await etcd.get(keys.drain("node-2")) is None
        view = mesh.gateway.router.ownership
        assert view is not None
        await eventually(
            lambda: view.pin_of("ws-7") == "node-1", message="the gateway sees the pin"
        )
        unpinned = (await meshctl(mesh, "unpin", "ws-7", "--json")).json()
        assert unpinned["previous_pinned_node_id"] == "node-1"
        assert await etcd.get(keys.pin("ws-7")) is None

    async def test_wait_follows_a_drain_and_a_migration_to_the_end(
        self, mesh: InProcessMesh
    ) -> None:
        async with mesh.stub() as stub:
            for index in range(6):
                await stub.CreateSession(
                    session_pb2.CreateSessionRequest(workspace_id=f"ws-{index}", session_id="s1"),
                    timeout=10,
                )
        view = mesh.gateway.router.ownership
        assert view is not None
        on_node_1 = await eventually(
            lambda: next(
                (f"ws-{i}" for i in range(6) if owner_id(view, f"ws-{i}") == "node-1"), None
            ),
            message="node-1 owns a workspace",
        )
        first_owner = {f"ws-{i}": owner_id(view, f"ws-{i}") for i in range(6)}
        assert set(first_owner.values()) <= {"node-1", "node-2"}
        moved = await meshctl(
            mesh, "migrate", on_node_1, "--to", "node-2", "--wait", "--timeout-seconds", "20"
        )
        assert moved.exit_code == 0, moved.stderr
        assert f"moved {on_node_1} to node-2" in moved.stdout
        where = (await meshctl(mesh, "where", on_node_1, "--json")).json()
        assert (where["pinned_node_id"], where["pinned_owner_node_id"]) == ("node-2", "node-2")

        drained = await meshctl(
            mesh, "drain", "node-1", "--wait", "--timeout-seconds", "20", "--json"
        )
        assert drained.json()["node_id"] == "node-1"
        nodes = (await meshctl(mesh, "nodes", "--json")).json()["nodes"]
        assert {node["node_id"]: node["owned_slot_count"] for node in nodes}["node-1"] == 0

        # The accounts DB saw each move exactly once: the migrated workspace and every
        # workspace the drain moved went node-1 → node-2 once; the others never moved.
        async def rows_settled() -> dict[str, WhatsappAccount] | None:
            for server in mesh.nodes.values():
                await server.flush_accounts()
            rows = await asyncio.to_thread(mesh.account_rows)
            print(
                sorted(rows),
                {k: (v.assigned_node_id, v.instance_migration_count) for k, v in rows.items()},
            )
            if all(rows[f"ws-{i}/s1"].assigned_node_id == "node-2" for i in range(6)):
                return rows
            return None

        rows = await eventually(rows_settled, message="every account assigned to node-2")
        for workspace_id, owner in first_owner.items():
            row = rows[f"{workspace_id}/s1"]
            if owner == "node-1":
                assert (row.previous_node_id, row.instance_migration_count) == ("node-1", 1)
                assert row.last_instance_migration_at is not None
            else:
                assert row.instance_migration_count == 0, workspace_id

    async def test_mistakes_exit_with_a_clear_message(self, mesh: InProcessMesh) -> None:
        unknown = await meshctl(mesh, "drain", "node-9", "--json")
        assert unknown.exit_code == 1
        assert "NOT_FOUND" in unknown.stderr and "node-9" in unknown.stderr
        assert unknown.stdout == ""

        bad_id = await meshctl(mesh, "where", "no/such", "--json")
        assert bad_id.exit_code == 1
        assert "INVALID_ARGUMENT" in bad_id.stderr and "workspace_id" in bad_id.stderr

        usage = await meshctl(mesh, "migrate", "ws-1")  # --to is missing
        assert usage.exit_code == 2
        assert "--to" in usage.stderr
