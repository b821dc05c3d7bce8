"""Start and stop a node: gRPC server, accounts DB, etcd membership, sessions.

Start: bind the port (port 0: any free one), open the accounts DB (migrating it first),
connect etcd and follow membership into a routing table and ownership into a view, start
serving, register in etcd, then run the reconciler's first pass to completion (it acquires
the slots placement gives this node and restores their sessions) and keep it running. Stop
(the SIGTERM path): mark the node ``draining``, hand every slot off, stop taking calls, stop
what is left gracefully (state flushed to storage), flush the accounts DB, revoke the lease,
close etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import logging
import random
import socket
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path

import aetcd
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node.config import NodeConfig, parse_host_port
from node.drivers.base import DriverFactory
from node.fencing import LeaseWatchdog
from node.manager import SessionManager
from node.metrics import NodeMetrics
from node.ownership import NodeOwnership
from node.reconciler import Reconciler
from node.service import SessionService
from node.shutdown import run_step
from node.storage import SessionStorage
from protos import SESSION_SERVICE_NAME, session_pb2_grpc
from registry.accounts import AccountStore, upgrade
from registry.background import stop_task
from registry.errors import Unavailable
from registry.keys import ClusterKeys
from registry.membership import (
    ACTIVE,
    DRAINING,
    MembershipWatcher,
    NodeRecord,
    NodeRegistration,
    connect_etcd,
)
from registry.ownership import OwnershipView
from registry.routing import RoutingTable
from telemetry.health import HealthServicer, new_health_servicer
from telemetry.tracing import server_interceptors

_log = logging.getLogger(__name__)

LOAD_PUBLISH_INTERVAL_SECONDS = 1.0
"""The node record's ``load`` is republished at most this often, and only when it changed."""
START_TIMEOUT_SECONDS = 10.0
"""How long a starting node waits to see its own record in etcd."""
STOP_STEP_MARGIN_SECONDS = 5.0
"""A stop step may take the grace period plus this before it is abandoned (and logged)."""
_MIGRATION_RETRY_MAX_DELAY_SECONDS = 0.5
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def _version() -> str:
    try:
        return importlib.metadata.version("sessionmesh")
    except importlib.metadata.PackageNotFoundError:
        return ""


async def _migrate(database_url: str) -> None:
    """Bring the accounts schema to head; one retry, because two nodes starting at once on
    one SQLite file can collide on the migration itself."""
    try:
        await asyncio.to_thread(upgrade, database_url)
    except Exception as error:
        _log.warning("accounts_migration_retry error=%r", error)
        # Jittered, so the two colliding nodes do not collide again.
        await asyncio.sleep(random.uniform(0.05, _MIGRATION_RETRY_MAX_DELAY_SECONDS))
        await asyncio.to_thread(upgrade, database_url)


def _dialable_address(listen_address: str, bound_port: int) -> str:
    """The listen host with the bound port; a wildcard host becomes this machine's name."""
    host, _ = parse_host_port(listen_address, field="--listen")
    if host in _WILDCARD_HOSTS:
        host = socket.gethostname()
    return f"{host}:{bound_port}"


def _default_driver_factory(config: NodeConfig) -> DriverFactory:
    from node.drivers.sim import SimDriverFactory  # noqa: PLC0415 - only when no factory given

    factory: DriverFactory = SimDriverFactory(simnet_address=config.simnet_address)
    return factory


class NodeServer:
    """A running node. Stop it with ``stop()``; everything it opened is closed then."""

    def __init__(
        self,
        *,
        config: NodeConfig,
        address: str,
        server: grpc.aio.Server,
        health_servicer: HealthServicer,
        manager: SessionManager,
        routing: RoutingTable,
        etcd: aetcd.Client,
        watcher: MembershipWatcher,
        registration: NodeRegistration,
        accounts: AccountStore | None,
        ownership: NodeOwnership,
        reconciler: Reconciler,
        watchdog: LeaseWatchdog,
    ) -> None:
        self._config = config
        self._address = address
        self._server = server
        self._health = health_servicer
        self._manager = manager
        self._routing = routing
        self._etcd = etcd
        self._watcher = watcher
        self._registration = registration
        self._accounts = accounts
        self._ownership = ownership
        self._reconciler = reconciler
        self._watchdog = watchdog
        self._load_task = asyncio.create_task(self._publish_load(), name="node-load")
        self._stop_lock = asyncio.Lock()
        self._is_stopped = False

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._config.node_id

    @property
    def address(self) -> str:
        """host:port others dial (the advertised address, with the bound port)."""
        return self._address

    @property
    def manager(self) -> SessionManager:
        """The sessions of this node."""
        return self._manager

    @property
    def routing(self) -> RoutingTable:
        """This node's watch-fed routing table."""
        return self._routing

    @property
    def registration(self) -> NodeRegistration:
        """This node's etcd membership."""
        return self._registration

    @property
    def ownership(self) -> NodeOwnership:
        """The slots and pinned workspaces this node holds."""
        return self._ownership

    @property
    def reconciler(self) -> Reconciler:
        """This node's reconciler."""
        return self._reconciler

    async def flush_accounts(self) -> None:
        """Write what this node queued for the accounts DB now (tests, operators)."""
        if self._accounts is not None:
            await self._accounts.flush()

    async def _publish_load(self) -> None:
        published = self._registration.record.load
        while True:
            await asyncio.sleep(LOAD_PUBLISH_INTERVAL_SECONDS)
            load = self._manager.hosted_count
            if load == published:
                continue
            try:
                await self._registration.update(replace(self._registration.record, load=load))
            except Unavailable as error:
                _log.warning("node_load_publish_failed node_id=%s error=%r", self.node_id, error)
                continue
            published = load

    async def stop(self, *, grace_seconds: float = 5.0) -> None:
        """Drain and stop: mark draining, hand every slot off to the nodes placement picks
        (bounded by ``grace_seconds``), stop taking calls, stop what is left (state flushed),
        flush the accounts DB, revoke the lease, close etcd. Safe to call twice."""
        async with self._stop_lock:
            if self._is_stopped:
                return
            self._is_stopped = True
            _log.info("node_stopping node_id=%s", self.node_id)
            await stop_task(self._load_task)
            limit = grace_seconds + STOP_STEP_MARGIN_SECONDS
            await self._step("catalog", self._ownership.catalog_counts.close(), limit)
            await self._reconciler.drain_for_shutdown(timeout_seconds=grace_seconds)
            await self._step("reconciler", self._reconciler.stop(), limit)
            await self._step("health", self._health.enter_graceful_shutdown(), limit)
            # New calls are refused from here; calls in flight get grace_seconds to finish,
            # while the sessions stop (which also ends every WatchSession stream).
            server_stopped = asyncio.create_task(self._server.stop(grace_seconds))
            await self._step("sessions", self._manager.stop_all(), limit)
            await self._step("grpc_server", server_stopped, limit)
            await self._step("lease_watchdog", self._watchdog.stop(), limit)
            if self._accounts is not None:
                await self._step("accounts_db", self._accounts.stop(), limit)
            await self._step("lease", self._registration.stop(), limit)
            await self._step("ownership_view", self._ownership.view.stop(), limit)
            await self._step("membership_watch", self._watcher.stop(), limit)
            await self._step("etcd", self._etcd.close(), limit)
            _log.info("node_stopped node_id=%s", self.node_id)

    async def _step(self, name: str, step: Awaitable[object], limit_seconds: float) -> None:
        await run_step(name, step, node_id=self.node_id, limit_seconds=limit_seconds)

    async def wait_for_termination(self) -> None:
        """Return when the gRPC server has stopped."""
        await self._server.wait_for_termination()


async def _publish_state(
    registration: NodeRegistration, manager: SessionManager, state: str
) -> None:
    try:
        record = replace(registration.record, state=state, load=manager.hosted_count)
        await registration.update(record)
    except Unavailable as error:
        _log.warning("node_state_publish_failed state=%s error=%r", state, error)


def _add_services(server: grpc.aio.Server, service: SessionService) -> HealthServicer:
    # The generated grpc module has no type annotations.
    session_pb2_grpc.add_SessionServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    health_servicer = new_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SESSION_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return health_servicer


async def start_node(
    config: NodeConfig, *, driver_factory: DriverFactory | None = None
) -> NodeServer:
    """Start a node as ``config`` says; raises ``Unavailable`` if etcd or the port is not
    there. Whatever was opened before a failure is closed again."""
    async with contextlib.AsyncExitStack() as cleanup:
        storage = SessionStorage(config.storage_path)
        await asyncio.to_thread(Path(storage.root).mkdir, parents=True, exist_ok=True)

        server = grpc.aio.server(interceptors=server_interceptors())
        cleanup.push_async_callback(server.stop, None)
        try:
            port = server.add_insecure_port(config.listen_address)
        except RuntimeError as error:
            raise Unavailable(f"cannot listen on {config.listen_address}: {error}") from error
        address = config.advertise_address or _dialable_address(config.listen_address, port)

        accounts: AccountStore | None = None
        if config.database_url:
            await _migrate(config.database_url)
            accounts = AccountStore(config.database_url)
            await accounts.start()
            cleanup.push_async_callback(accounts.stop)

        etcd = await connect_etcd(config.etcd_endpoints)
        cleanup.push_async_callback(etcd.close)
        keys = ClusterKeys(config.cluster)
        routing = RoutingTable()
        watcher = MembershipWatcher(etcd, keys)
        watcher.subscribe(routing.update)
        await watcher.start()
        cleanup.push_async_callback(watcher.stop)

        metrics = NodeMetrics(config.node_id, capacity=config.max_sessions)
        manager = SessionManager(
            node_id=config.node_id,
            node_address=address,
            storage=storage,
            driver_factory=driver_factory or _default_driver_factory(config),
            max_sessions=config.max_sessions,
            restore_concurrency=config.restore_concurrency,
            accounts=accounts,
            metrics=metrics,
        )
        cleanup.push_async_callback(manager.stop_all)

        view = OwnershipView(etcd, keys, slot_count=routing.slot_count)
        await view.start()
        cleanup.push_async_callback(view.stop)
        fencing = _Fencing()
        registration = _new_registration(config, etcd, keys, address, fencing)
        ownership = NodeOwnership(
            node_id=config.node_id,
            etcd=etcd,
            keys=keys,
            view=view,
            watcher=watcher,
            routing=routing,
            manager=manager,
            metrics=metrics,
            lease_id=lambda: registration.lease_id,
            accounts=accounts,
        )

        async def publish_draining(is_draining: bool) -> None:
            await _publish_state(registration, manager, DRAINING if is_draining else ACTIVE)

        reconciler = Reconciler(
            ownership,
            routing,
            interval_seconds=config.reconcile_interval_seconds,
            max_moves_in_flight=config.max_moves_in_flight,
            publish_draining=publish_draining,
        )
        cleanup.push_async_callback(reconciler.stop)
        fencing.bind(ownership, reconciler)
        watchdog = LeaseWatchdog(
            registration,
            lease_ttl_seconds=config.lease_ttl_seconds,
            on_expiring=fencing.lease_lost,
            on_recovered=fencing.lease_back,
        )

        health_servicer = _add_services(server, SessionService(manager, ownership=ownership))
        await server.start()
        for service_name in ("", SESSION_SERVICE_NAME):
            await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)

        await registration.start()
        cleanup.push_async_callback(registration.stop)
        watchdog.start()
        cleanup.push_async_callback(watchdog.stop)
        await _first_pass(config.node_id, watcher, view, reconciler)
        _log.info(
            "node_started node_id=%s slots=%d sessions=%d",
            config.node_id,
            len(ownership.owned),
            manager.hosted_count,
        )
        cleanup.pop_all()  # started: from here NodeServer.stop closes everything
    return NodeServer(
        config=config,
        address=address,
        server=server,
        health_servicer=health_servicer,
        manager=manager,
        routing=routing,
        etcd=etcd,
        watcher=watcher,
        registration=registration,
        accounts=accounts,
        ownership=ownership,
        reconciler=reconciler,
        watchdog=watchdog,
    )


def _new_registration(
    config: NodeConfig, etcd: aetcd.Client, keys: ClusterKeys, address: str, fencing: _Fencing
) -> NodeRegistration:
    record = NodeRecord(
        node_id=config.node_id,
        address=address,
        capacity=config.max_sessions,
        zone=config.zone,
        load=0,
        version=_version(),
        metrics_address=config.metrics_listen,
    )
    return NodeRegistration(
        etcd,
        keys,
        record,
        lease_ttl_seconds=config.lease_ttl_seconds,
        on_lease_lost=fencing.lease_lost,
        on_lease_regained=fencing.lease_regained,
    )


async def _first_pass(
    node_id: str, watcher: MembershipWatcher, view: OwnershipView, reconciler: Reconciler
) -> None:
    """Run the reconciler's first pass to completion, then keep it running."""
    # Placement must see this node before the first pass, or it gives it nothing.
    try:
        await watcher.wait_until(
            lambda nodes: node_id in nodes, timeout_seconds=START_TIMEOUT_SECONDS
        )
    except TimeoutError as error:
        raise Unavailable(f"node {node_id} never saw itself in etcd") from error
    watcher.subscribe(reconciler.poke)
    view.subscribe(reconciler.poke)
    # A started node already serves (and has restored) what placement gives it.
    await reconciler.run_once()
    await reconciler.settle()
    reconciler.start()


class _Fencing:
    """Turns lease events into fencing: a lost (or stale) lease stops every session at once;
    a lease back lets the reconciler acquire again."""

    def __init__(self) -> None:
        self._ownership: NodeOwnership | None = None
        self._reconciler: Reconciler | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def bind(self, ownership: NodeOwnership, reconciler: Reconciler) -> None:
        """Attach what to fence (the registration is built before them)."""
        self._ownership, self._reconciler = ownership, reconciler

    def lease_lost(self) -> None:
        """Stop everything now: the keys are bound to the lease that is going."""
        if self._ownership is None or not self._ownership.has_lease:
            return
        task = asyncio.create_task(self._ownership.fence_all(), name="fence-all")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def lease_regained(self, lease_id: int) -> None:
        """A new lease: acquire again through the reconciler."""
        self.lease_back()

    def lease_back(self) -> None:
        """The lease is healthy again."""
        if self._ownership is not None and self._reconciler is not None:
            self._ownership.has_lease = True
            self._reconciler.poke()
