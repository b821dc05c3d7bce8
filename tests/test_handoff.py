"""Live moves: a joining node takes exactly the slots placement moves to it while a client keeps
calling (no call fails, nothing sent twice, no QR, no "connection replaced"); a drain, a pin and
a graceful stop move sessions the same way, and the accounts DB counts every move once."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from protos import session_pb2
from registry import cancel_drain, clear_pin, connect_etcd, request_drain, set_pin, slot_of
from testkit import InProcessMesh, eventually, running_inprocess_mesh

pb = session_pb2
WORKSPACES = [f"ws-{i}" for i in range(16)]
SESSIONS = [(ws, f"s-{index}") for index, ws in enumerate(WORKSPACES)]
"""Session ids are unique across workspaces: the accounts DB keys rows by session_id."""


class _ViewMonitor:
    """Samples every node's own view of what it serves, every few milliseconds, and records
    any moment when two nodes would both serve one slot."""

    def __init__(self, mesh: InProcessMesh) -> None:
        self.mesh = mesh
        self.samples = 0
        self.violations: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._seen = dict(mesh.nodes)  # a stopping node leaves mesh.nodes before it hands off

    def _sample(self) -> None:
        self._seen.update(self.mesh.nodes)
        serving: dict[int, str] = {}
        for node_id, server in list(self._seen.items()):
            for slot in server.slots.serving_slots():
                other = serving.setdefault(slot, node_id)
                if other != node_id:
                    self.violations.append(f"slot {slot} served by {other} and {node_id}")
        self.samples += 1

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(0.005)

    def __enter__(self) -> _ViewMonitor:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()


class _Load:
    """A client that keeps sending and reading through the gateway, recording every failure."""

    def __init__(self, mesh: InProcessMesh) -> None:
        self.mesh = mesh
        self.acked: list[tuple[str, str]] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        counter = itertools.count()
        async with self.mesh.stub() as stub:
            for ws, sid in itertools.cycle(SESSIONS):
                if self._stop.is_set():
                    return
                message_id = f"m-{next(counter)}"
                try:
                    await stub.SendMessage(
                        pb.SendMessageRequest(
                            workspace_id=ws,
                            session_id=sid,
                            client_message_id=message_id,
                            to="+1",
                            text="hi",
                        ),
                        timeout=10,
                    )
                    self.acked.append((f"{ws}/{sid}", message_id))
                    await stub.GetSession(
                        pb.GetSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                    )
                except Exception as error:  # any failure is what the test looks for
                    self.failures.append(f"{ws}: {error!r}")

    def __enter__(self) -> _Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        """Stop sending and wait for the last call."""
        self._stop.set()
        if self._task is not None:
            await self._task

    def __exit__(self, *_: object) -> None:
        self._stop.set()


async def _all_delivered_once(mesh: InProcessMesh, acked: list[tuple[str, str]]) -> None:
    def delivered() -> bool:
        return all(mesh.simnet.delivered_ids(acc)[mid] == 1 for acc, mid in acked)

    await eventually(delivered, timeout_seconds=15, message="acked messages delivered")
    assert all(mesh.simnet.delivered_ids(acc)[mid] == 1 for acc, mid in acked)


class TestJoinAndStop:
    """A third node joins two under load, then stops gracefully."""

    async def test_only_moved_slots_move_live_and_nothing_fails(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            async with mesh.stub() as stub:
                for ws, sid in SESSIONS:
                    await stub.CreateSession(
                        pb.CreateSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                    )
            before_nodes = await mesh.wait_ready(SESSIONS)
            await mesh.wait_placed(WORKSPACES)
            before = mesh.owners()
            qr_before = {acc: mesh.simnet.qr_issued(acc) for acc in before_nodes}

            with _ViewMonitor(mesh) as monitor, _Load(mesh) as load:
                await mesh.start_node("node-3")
                await mesh.wait_placed(WORKSPACES)
                after_nodes = await mesh.wait_ready(SESSIONS)
                await load.stop()
            assert monitor.samples > 10 and monitor.violations == []
            after = mesh.owners()
            assert load.failures == []
            assert len(load.acked) > 0
            for ws in WORKSPACES:
                slot = slot_of(ws)
                if after[slot] != before[slot]:
                    assert after[slot] == "node-3" == mesh.placement(slot)
            moved = {acc for acc in after_nodes if after_nodes[acc] != before_nodes[acc]}
            assert moved and {after_nodes[acc] for acc in moved} == {"node-3"}
            assert {acc: mesh.simnet.qr_issued(acc) for acc in before_nodes} == qr_before
            await _all_delivered_once(mesh, load.acked)
            assert mesh.simnet.replaced_events == []

            with _ViewMonitor(mesh) as monitor, _Load(mesh) as load:
                await mesh.stop_node("node-3")
                await mesh.wait_placed(WORKSPACES)
                final_nodes = await mesh.wait_ready(SESSIONS)
                await load.stop()
            assert monitor.samples > 10 and monitor.violations == []
            assert load.failures == []
            assert "node-3" not in set(final_nodes.values())
            await _all_delivered_once(mesh, load.acked)
            assert mesh.simnet.replaced_events == []
            for server in mesh.nodes.values():
                await server.flush_accounts()
            # Read before the mesh stops: stopping node-1 would hand its slots off again.
            rows = await asyncio.to_thread(mesh.account_rows)
            for acc in moved:
                row = rows[acc]
                # Onto node-3 and off it again: exactly two moves, each counted once.
                assert row.assigned_node_id == final_nodes[acc]
                assert row.previous_node_id == "node-3"
                assert row.instance_migration_count == 2, (acc, row.instance_migration_count)
            for acc in set(before_nodes) - moved:
                assert rows[acc].instance_migration_count == 0


class TestDrainAndPin:
    """An operator's drain and pin move sessions; withdrawing them moves them back."""

    async def test_drain_then_pin(self, tmp_path: Path, etcd_url: str, cluster_name: str) -> None:
        async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name) as mesh:
            async with mesh.stub() as stub:
                for ws, sid in SESSIONS:
                    await stub.CreateSession(
                        pb.CreateSessionRequest(workspace_id=ws, session_id=sid), timeout=10
                    )
            await mesh.wait_ready(SESSIONS)
            client = await connect_etcd(etcd_url)
            keys = mesh.gateway_keys
            try:
                await request_drain(client, keys, "node-1")
                drained = await mesh.wait_ready(SESSIONS)

                async def all_on_node_2() -> bool:
                    return set((await mesh.wait_ready(SESSIONS)).values()) == {"node-2"}

                await eventually(all_on_node_2, timeout_seconds=20, message="node-1 drained")
                assert mesh.nodes["node-1"].slots.slots() == {}
                await cancel_drain(client, keys, "node-1")
                router = mesh.gateway.router
                await eventually(lambda: router.nodes["node-1"].is_active, message="active")
                await mesh.wait_placed(WORKSPACES)
                back = await mesh.wait_ready(SESSIONS)
                assert set(back.values()) == {"node-1", "node-2"}

                account = next(acc for acc, node_id in back.items() if node_id == "node-2")
                ws = account.split("/")[0]
                await set_pin(client, keys, ws, "node-1")

                async def on(node_id: str) -> bool:
                    return (await mesh.wait_ready(SESSIONS))[account] == node_id

                await eventually(lambda: on("node-1"), timeout_seconds=15, message="pinned")
                await clear_pin(client, keys, ws)
                await eventually(lambda: on("node-2"), timeout_seconds=15, message="unpinned")
                assert mesh.simnet.replaced_events == []
                assert drained  # every session answered READY during the drain
            finally:
                await client.close()
