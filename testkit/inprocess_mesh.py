"""A mesh in the test's own event loop, on port 0 against a real etcd: a simnet
(:func:`running_simnet`), one node with a stub on it (:func:`running_node`), or a whole mesh
of N nodes behind a gateway (:func:`running_inprocess_mesh`), with handles on their internals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from sqlmodel import Session, select

import gateway
import node
from node.drivers.base import DriverFactory
from protos import session_pb2, session_pb2_grpc
from registry import ClusterKeys, RingTable, place_slot, slot_of
from registry.accounts import WhatsappAccount, make_engine, upgrade
from simnet import SimNet
from testkit.waiting import eventually

LEASE_TTL_SECONDS = 2
"""Every in-process node's lease TTL: etcd's minimum, for quick failovers."""


@asynccontextmanager
async def running_simnet(
    *, pair_delay_ms: int = 20, ack_delay_ms: int = 1, qr_rotate_ms: int = 20_000
) -> AsyncIterator[SimNet]:
    """A simnet on port 0, stopped afterwards; a negative ``pair_delay_ms`` means nobody
    scans the QR code until a test pairs it by hand."""
    simnet = SimNet(
        pair_delay_ms=pair_delay_ms, ack_delay_ms=ack_delay_ms, qr_rotate_ms=qr_rotate_ms
    )
    await simnet.start()
    try:
        yield simnet
    finally:
        await simnet.stop()


@dataclass
class RunningNode:
    """A started node, a SessionService stub on it, and where it stores sessions."""

    server: node.NodeServer
    stub: session_pb2_grpc.SessionServiceStub
    channel: grpc.aio.Channel
    storage: Path


@asynccontextmanager
async def running_node(
    state_dir: Path,
    etcd_url: str,
    cluster: str,
    simnet: SimNet,
    *,
    node_id: str = "node-1",
    max_sessions: int = 500,
    driver_factory: DriverFactory | None = None,
    extra_flags: Sequence[str] = (),
) -> AsyncIterator[RunningNode]:
    """Start one node on port 0 over ``state_dir/sessions`` and ``state_dir/accounts.db`` (the
    same every time: a restart finds its sessions); stop it and close the channel afterwards."""
    storage = state_dir / "sessions"
    config = node.load_config(
        [
            "--node-id", node_id,
            "--listen", "127.0.0.1:0",
            "--etcd", etcd_url,
            "--cluster", cluster,
            "--storage", str(storage),
            "--max-sessions", str(max_sessions),
            "--database-url", f"sqlite:///{state_dir / 'accounts.db'}",
            "--simnet", simnet.address,
            "--lease-ttl-seconds", str(LEASE_TTL_SECONDS),
            "--auth", "off",  # extra_flags may turn tokens on again: the last flag wins
            *extra_flags,
        ],
        environ={},
    )  # fmt: skip
    server = await node.start_node(config, driver_factory=driver_factory)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
            yield RunningNode(server, stub, channel, storage)
    finally:
        await server.stop(grace_seconds=1)


def routed_nodes(table: RingTable) -> dict[str, str]:
    """Every node a routing table sends some slot to, with the address it would dial."""
    found: dict[str, str] = {}
    for slot in range(table.slot_count):
        record = table.node_for_slot(slot)
        if record is not None:
            found[record.node_id] = record.address
    return found


@dataclass
class InProcessMesh:
    """Handles on the running parts of an in-process mesh; build it with
    :func:`running_inprocess_mesh`."""

    tmp_path: Path
    etcd_url: str
    cluster: str
    simnet: SimNet
    gateway: gateway.GatewayServer
    nodes: dict[str, node.NodeServer] = field(default_factory=dict)
    max_sessions: int = 500
    database_url: str = ""
    """The accounts DB every node shares (see :func:`running_inprocess_mesh`)."""

    @property
    def storage(self) -> Path:
        """The shared session storage folder."""
        return self.tmp_path / "sessions"

    def node_flags(self, node_id: str) -> list[str]:
        """The command-line flags of one node of this mesh."""
        return [
            "--node-id", node_id,
            "--listen", "127.0.0.1:0",
            "--etcd", self.etcd_url,
            "--cluster", self.cluster,
            "--storage", str(self.storage),
            "--max-sessions", str(self.max_sessions),
            "--database-url", self.database_url,
            "--simnet", self.simnet.address,
            "--lease-ttl-seconds", str(LEASE_TTL_SECONDS),
            "--auth", "off",
        ]  # fmt: skip

    async def start_node(self, node_id: str) -> node.NodeServer:
        """Start (or restart) a node and wait until the gateway routes to it."""
        server = await node.start_node(node.load_config(self.node_flags(node_id), environ={}))
        self.nodes[node_id] = server
        await self.wait_routable()
        return server

    async def stop_node(self, node_id: str) -> None:
        """Stop a node gracefully and wait until the gateway no longer routes to it."""
        await self.nodes.pop(node_id).stop()
        await self.wait_routable()

    async def wait_routable(self) -> None:
        """Wait until the gateway's and every node's ring hold exactly the running nodes."""
        expected = {server.node_id: server.address for server in self.nodes.values()}

        def converged() -> bool:
            tables = [self.gateway.router.ring, *(s.ring for s in self.nodes.values())]
            return all(routed_nodes(table) == expected for table in tables)

        await eventually(converged, timeout_seconds=15, message=f"ring of {sorted(expected)}")

    @property
    def gateway_keys(self) -> ClusterKeys:
        """The etcd key layout of this mesh's cluster."""
        return ClusterKeys(self.cluster)

    async def wait_ready(
        self, sessions: list[tuple[str, str]], *, timeout_seconds: float = 20
    ) -> dict[str, str]:
        """Wait until every session is READY through the gateway; return where each one runs
        (``"ws/sid"`` → node id)."""
        placed: dict[str, str] = {}
        async with self.stub() as stub:

            async def ready() -> bool:
                for ws, sid in sessions:
                    got = await stub.GetSession(
                        session_pb2.GetSessionRequest(workspace_id=ws, session_id=sid), timeout=5
                    )
                    if got.state != session_pb2.SESSION_STATE_READY:
                        return False
                    placed[f"{ws}/{sid}"] = got.node_id
                return True

            await eventually(ready, timeout_seconds=timeout_seconds, message="sessions READY")
        return placed

    def account_rows(self) -> dict[str, WhatsappAccount]:
        """The accounts DB now, by ``"ws/sid"`` (blocking: call it through a thread)."""
        engine = make_engine(self.database_url)
        try:
            with Session(engine) as session:
                return {
                    f"{row.workspace_id}/{row.session_id}": row
                    for row in session.exec(select(WhatsappAccount))
                }
        finally:
            engine.dispose()

    def owners(self) -> dict[int, str]:
        """Slot → node, from what every running node says it owns (a slot twice: assert)."""
        found: dict[int, str] = {}
        for server in self.nodes.values():
            for slot in server.slots.slots():
                assert slot not in found, f"slot {slot} owned by {found[slot]} and {server.node_id}"
                found[slot] = server.node_id
        return found

    def placement(self, slot: int) -> str | None:
        """Where placement puts ``slot``, as the gateway's membership sees it."""
        return place_slot(self.gateway.router.ring, self.gateway.router.nodes, slot)

    async def wait_placed(self, workspaces: list[str], *, timeout_seconds: float = 20) -> None:
        """Wait until every slot of ``workspaces`` is owned by its placement, nothing moving."""

        def placed() -> bool:
            owners = self.owners()
            settled = all(s.reconciler.moves_in_flight == 0 for s in self.nodes.values())
            return settled and all(
                owners.get(slot_of(ws)) == self.placement(slot_of(ws)) for ws in workspaces
            )

        await eventually(placed, timeout_seconds=timeout_seconds, message="slots placed")

    @asynccontextmanager
    async def stub(self) -> AsyncIterator[session_pb2_grpc.SessionServiceStub]:
        """A SessionService stub that talks to the gateway."""
        async with grpc.aio.insecure_channel(self.gateway.address) as channel:
            yield session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]


@asynccontextmanager
async def running_inprocess_mesh(
    tmp_path: Path,
    etcd_url: str,
    cluster: str,
    *,
    node_count: int = 2,
    pair_delay_ms: int = 30,
    max_sessions: int = 500,
    database_url: str = "",
) -> AsyncIterator[InProcessMesh]:
    """Start simnet, a gateway and ``node_count`` nodes; stop all of them afterwards.

    ``database_url``: the accounts DB (upgraded first, so the nodes do not race to migrate it);
    empty: a SQLite file in ``tmp_path``."""
    async with running_simnet(pair_delay_ms=pair_delay_ms, ack_delay_ms=2) as simnet:
        database_url = database_url or f"sqlite:///{tmp_path / 'accounts.db'}"
        await asyncio.to_thread(upgrade, database_url)  # off the loop: it may run a proxy
        gateway_config = gateway.load_config(
            ["--listen", "127.0.0.1:0", "--etcd", etcd_url, "--cluster", cluster, "--auth", "off"],
            environ={},
        )
        gateway_server = await gateway.start_gateway(gateway_config)
        mesh = InProcessMesh(
            tmp_path=tmp_path,
            etcd_url=etcd_url,
            cluster=cluster,
            simnet=simnet,
            gateway=gateway_server,
            max_sessions=max_sessions,
            database_url=database_url,
        )
        try:
            for index in range(1, node_count + 1):
                await mesh.start_node(f"node-{index}")
            yield mesh
        finally:
            for server in list(mesh.nodes.values()):
                await server.stop(grace_seconds=1)
            await gateway_server.stop(grace_seconds=1)
