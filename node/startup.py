"""Starting a node: every part wired to the ones it needs, in an order that lets each start.

Bind the port (port 0: any free one), start the accounts store (it migrates the schema and
writes beside everything else, so a DB that is down holds nothing up), connect etcd and follow
membership into the ring and ownership into a view, start serving, register in etcd, then run
the reconciler's first pass to completion (it acquires the slots placement gives this node and
restores their sessions) and keep it running. Whatever was opened before a failure is closed
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aetcd
import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node.budget import WorkBudget
from node.catalog import CatalogBook, CatalogCounts
from node.config import WHATSMEOW_DRIVER, NodeConfig
from node.drivers.base import DriverFactory
from node.heartbeat import Heartbeat
from node.lease_fence import LEASE_FENCE_SHARE, LeaseFence
from node.manager import SessionManager
from node.metrics import NodeMetrics
from node.moves import Moves
from node.peer_liveness import PeerLiveness
from node.placement import NodePlacement
from node.quarantine_book import QuarantineBook
from node.readiness import Readiness
from node.reconciler import Reconciler
from node.server import NodeParts, NodeServer
from node.service import SessionService
from node.serving import ServingCheck
from node.session_limits import SessionLimits
from node.slot_table import SlotTable
from node.storage import SessionStorage
from node.storage_health import StorageHealth
from node.webhooks.hub import WebhookHub
from node.webhooks.sender import WebhookSender
from node.webhooks.service import WebhookService
from node.workspace_quotas import WorkspaceQuotas
from protos import SESSION_SERVICE_NAME, WEBHOOK_SERVICE_NAME, session_pb2_grpc, webhook_pb2_grpc
from registry import (
    ACTIVE,
    DRAINING,
    ClusterKeys,
    InvalidInput,
    MembershipWatcher,
    NodeRecord,
    OwnershipView,
    RingTable,
    Unavailable,
    UndecodableRequestInterceptor,
    connect_etcd,
    parse_host_port,
    server_options,
)
from registry.accounts import AccountStore
from registry.auth import (
    AccessInterceptor,
    open_access,
)
from registry.webhooks import WebhookDirectory
from telemetry import HealthServicer, new_health_servicer, server_interceptors

_log = structlog.get_logger(__name__)

START_TIMEOUT_SECONDS = 10.0
"""How long a starting node waits to see its own record in etcd."""
WHATSAPP_EXTRA_MISSING = (
    "--driver whatsmeow needs the whatsapp extra (neonize), which is not installed: "
    "pip install 'sessionmesh[whatsapp]'"
)
"""Why a node started with ``--driver whatsmeow`` stops at once in a plain install."""
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def _version() -> str:
    try:
        return importlib.metadata.version("sessionmesh")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _dialable_address(listen_address: str, bound_port: int) -> str:
    """The listen host with the bound port; a wildcard host becomes this machine's name."""
    host, _ = parse_host_port(listen_address, field="--listen")
    if host in _WILDCARD_HOSTS:
        host = socket.gethostname()
    return f"{host}:{bound_port}"


def _default_driver_factory(config: NodeConfig, storage_root: Path) -> DriverFactory:
    """The factory of the driver ``--driver`` names; ``InvalidInput`` naming the extra to
    install when the driver's library is missing (the node then does not start)."""
    if config.driver == WHATSMEOW_DRIVER:
        return _whatsmeow_driver_factory(storage_root)
    from node.drivers.sim import SimDriverFactory  # noqa: PLC0415 - only when no factory given

    factory: DriverFactory = SimDriverFactory(simnet_address=config.simnet_address)
    return factory


def _whatsmeow_driver_factory(storage_root: Path) -> DriverFactory:
    # neonize first, by itself: its absence is what an operator can fix, whether the driver
    # module imports it at once or only when a session starts. The driver module only here:
    # a plain install (no extra) must import node.startup and start the sim driver.
    try:
        importlib.import_module("neonize")
    except ImportError as error:
        raise InvalidInput(WHATSAPP_EXTRA_MISSING) from error
    from node.drivers.whatsmeow import WhatsmeowDriverFactory  # noqa: PLC0415 - see above

    factory: DriverFactory = WhatsmeowDriverFactory(storage_root)
    return factory


def _add_services(
    server: grpc.aio.Server, service: SessionService, webhooks: WebhookService
) -> HealthServicer:
    # The generated grpc modules have no type annotations.
    session_pb2_grpc.add_SessionServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    webhook_pb2_grpc.add_WebhookServiceServicer_to_server(webhooks, server)  # type: ignore[no-untyped-call]
    health_servicer = new_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SESSION_SERVICE_NAME,
            WEBHOOK_SERVICE_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return health_servicer


def _own_record(config: NodeConfig, address: str) -> NodeRecord:
    return NodeRecord(
        node_id=config.node_id,
        address=address,
        capacity=config.max_sessions,
        zone=config.zone,
        load=0,
        version=_version(),
        metrics_address=config.metrics_listen,
    )


async def _bind(
    config: NodeConfig, access: AccessInterceptor, cleanup: contextlib.AsyncExitStack
) -> tuple[grpc.aio.Server, str]:
    """The gRPC server with its port bound, and the address others dial."""
    # The span interceptor first: a request that does not parse (or is refused) is traced
    # too; the access check before the lenient parser: a stranger learns nothing.
    server = grpc.aio.server(
        interceptors=[*server_interceptors(), access, UndecodableRequestInterceptor()],
        options=server_options(
            config.max_message_bytes,
            max_streams_per_connection=config.max_streams_per_connection,
        ),
    )
    cleanup.push_async_callback(server.stop, None)
    try:
        if config.tls is None:
            port = server.add_insecure_port(config.listen_address)
        else:  # mutual TLS only: no caller without a mesh certificate, no plaintext port
            credentials = config.tls.server_credentials(require_client_certificate=True)
            port = server.add_secure_port(config.listen_address, credentials)
    except RuntimeError as error:
        raise Unavailable(f"cannot listen on {config.listen_address}: {error}") from error
    return server, config.advertise_address or _dialable_address(config.listen_address, port)


async def _open_accounts(
    config: NodeConfig, metrics: NodeMetrics, cleanup: contextlib.AsyncExitStack
) -> AccountStore | None:
    """The accounts store, started: it upgrades the schema and writes in the background, as
    soon and as often as the DB answers."""
    if not config.database_url:
        return None
    accounts = AccountStore(
        config.database_url,
        max_pending_sessions=config.accounts_max_pending_sessions,
        upgrade_schema=True,
        on_changes_dropped=metrics.accounts_changes_dropped,
    )
    metrics.watch_accounts_pending(lambda: accounts.pending_count)
    metrics.watch_accounts_db(lambda: accounts.is_available)
    await accounts.start()
    cleanup.push_async_callback(accounts.stop)
    return accounts


async def _follow_etcd(
    config: NodeConfig, cleanup: contextlib.AsyncExitStack
) -> tuple[aetcd.Client, ClusterKeys, MembershipWatcher, RingTable, OwnershipView]:
    """etcd, and the watch-fed membership (into the ring) and ownership views."""
    etcd = await connect_etcd(config.etcd_endpoints, tls=config.etcd_tls)
    cleanup.push_async_callback(etcd.close)
    keys = ClusterKeys(config.cluster)
    ring = RingTable()
    membership = MembershipWatcher(etcd, keys)
    membership.subscribe(ring.update)
    await membership.start()
    cleanup.push_async_callback(membership.stop)
    view = OwnershipView(etcd, keys, slot_count=ring.slot_count)
    await view.start()
    cleanup.push_async_callback(view.stop)
    return etcd, keys, membership, ring, view


async def _start_webhooks(
    config: NodeConfig,
    etcd: aetcd.Client,
    keys: ClusterKeys,
    storage: SessionStorage,
    cleanup: contextlib.AsyncExitStack,
) -> tuple[WebhookHub, WebhookDirectory]:
    directory = WebhookDirectory(etcd, keys)
    await directory.start()
    cleanup.push_async_callback(directory.stop)
    hub = WebhookHub(
        node_id=config.node_id,
        endpoints=directory,
        sender=WebhookSender(
            allow_private=config.webhook_allow_private,
            timeout_seconds=config.webhook_timeout_seconds,
            max_concurrency=config.webhook_max_concurrency,
        ),
        storage=storage,
        schedule=config.webhook_retry_schedule,
    )
    cleanup.push_async_callback(hub.stop)
    return hub, directory


async def start_node(
    config: NodeConfig, *, driver_factory: DriverFactory | None = None
) -> NodeServer:
    """Start a node as ``config`` says; raises ``Unavailable`` if etcd or the port is not
    there. Whatever was opened before a failure is closed again."""
    async with contextlib.AsyncExitStack() as cleanup:
        readiness = Readiness()
        storage_root = config.storage_path.resolve()
        # Before anything is opened: a driver whose extra is missing stops the start here.
        driver_factory = driver_factory or _default_driver_factory(config, storage_root)
        storage_health = StorageHealth(
            root=storage_root,
            node_id=config.node_id,
            timeout_seconds=config.storage_timeout_seconds,
            on_change=readiness.storage,
        )
        cleanup.push_async_callback(storage_health.stop)
        metrics = NodeMetrics(config.node_id, capacity=config.max_sessions)
        storage = SessionStorage(
            storage_root,
            timeout_seconds=config.storage_timeout_seconds,
            on_stall=storage_health.stalled,
            name=config.node_id,
            on_dropped=lambda: metrics.dropped("storage_statuses", "status"),
            on_refused=lambda: metrics.refused("storage_queue"),
        )
        cleanup.callback(storage.close)
        await asyncio.to_thread(Path(storage.root).mkdir, parents=True, exist_ok=True)
        # Until the token cache is loaded the check refuses every call (none can arrive:
        # the server starts later).
        access_check = AccessInterceptor(
            workspace_services=(SESSION_SERVICE_NAME, WEBHOOK_SERVICE_NAME)
        )
        server, address = await _bind(config, access_check, cleanup)
        accounts = await _open_accounts(config, metrics, cleanup)
        etcd, keys, membership, ring, view = await _follow_etcd(config, cleanup)
        access = await open_access(config.auth, etcd, keys, process=config.node_id)
        cleanup.push_async_callback(access.stop)
        access_check.access = access.access

        slots = SlotTable(metrics=metrics, readiness=readiness)
        budget = WorkBudget(node_id=config.node_id, limit=config.max_in_flight, metrics=metrics)

        def lease_changed() -> None:
            lease_fence.evaluate()

        heartbeat = Heartbeat(
            etcd_endpoints=config.etcd_endpoints,
            etcd_tls=config.etcd_tls,
            keys=keys,
            record=_own_record(config, address),
            lease_ttl_seconds=config.lease_ttl_seconds,
            fence_limit_seconds=config.lease_ttl_seconds * LEASE_FENCE_SHARE,
            loop_stall_limit_seconds=config.loop_stall_limit_seconds,
            metrics=metrics,
            on_change=lease_changed,
            is_storage_healthy=storage_health.is_healthy,
        )
        metrics.watch_lease(
            age_seconds=heartbeat.lease_age_seconds, is_confirmed=heartbeat.is_confirmed
        )
        placement = NodePlacement(
            node_id=config.node_id, membership=membership, ring=ring, slots=slots
        )
        serving = ServingCheck(
            slots=slots,
            view=view,
            placement=placement,
            is_lease_confirmed=heartbeat.is_confirmed,
        )
        quarantine = QuarantineBook(etcd=etcd, keys=keys, node_id=config.node_id, metrics=metrics)
        cleanup.push_async_callback(quarantine.stop)
        webhook_hub, webhook_directory = await _start_webhooks(config, etcd, keys, storage, cleanup)
        manager = SessionManager(
            node_id=config.node_id,
            node_address=address,
            storage=storage,
            driver_factory=driver_factory,
            max_sessions=config.max_sessions,
            metrics=metrics,
            admits=serving.admits,
            budget=budget,
            may_write=heartbeat.confirmed_lease,
            is_node_gone=PeerLiveness(
                is_member=placement.is_alive, last_address=membership.last_address
            ).is_gone,
            quarantine=quarantine,
            restore_concurrency=config.restore_concurrency,
            accounts=accounts,
            limits=SessionLimits(
                outbox_max_queued=config.outbox_max_queued,
                max_watchers=config.max_watchers_per_session,
            ),
            quotas=WorkspaceQuotas(
                max_sessions=config.max_sessions_per_workspace,
                sends_per_second=config.sends_per_second_per_workspace,
            ),
            webhooks=webhook_hub,
        )
        cleanup.push_async_callback(manager.stop_all)
        catalog = CatalogBook(
            CatalogCounts(
                etcd,
                keys,
                slot_count=ring.slot_count,
                session_count=manager.session_count,
                node_id=config.node_id,
            )
        )

        moves = Moves(
            node_id=config.node_id,
            etcd=etcd,
            keys=keys,
            slots=slots,
            view=view,
            placement=placement,
            serving=serving,
            catalog=catalog,
            manager=manager,
            heartbeat=heartbeat,
            metrics=metrics,
            accounts=accounts,
            budget=budget,
        )
        reconciler = Reconciler(
            node_id=config.node_id,
            slots=slots,
            view=view,
            placement=placement,
            moves=moves,
            interval_seconds=config.reconcile_interval_seconds,
            max_moves_in_flight=config.max_moves_in_flight,
            publish_draining=_draining_publisher(heartbeat, manager),
        )
        cleanup.push_async_callback(reconciler.stop)
        lease_fence = LeaseFence(
            heartbeat, slots, stop_everything=moves.fence_all, on_recovered=reconciler.poke
        )

        service = SessionService(
            manager, serving=serving, moves=moves, catalog=catalog, budget=budget
        )
        health_servicer = _add_services(
            server,
            service,
            WebhookService(
                hub=webhook_hub,
                etcd=etcd,
                keys=keys,
                serve=service.serve,
                allow_private=config.webhook_allow_private,
                may_write=lambda: heartbeat.confirmed_lease() != 0,
                rpc_finished=service.rpc_finished,
            ),
        )
        await server.start()
        await health_servicer.set(WEBHOOK_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        readiness.attach(health_servicer)
        storage_health.start()

        await heartbeat.start()
        cleanup.push_async_callback(heartbeat.stop)
        lease_fence.start()
        cleanup.push_async_callback(lease_fence.stop)
        await _first_pass(config.node_id, membership, view, reconciler)
        _log.info(
            "node_started",
            node_id=config.node_id,
            slots=len(slots.slots()),
            sessions=manager.hosted_count,
        )
        cleanup.pop_all()  # started: from here NodeServer.stop closes everything
    parts = NodeParts(
        server=server,
        health=health_servicer,
        etcd=etcd,
        membership=membership,
        ring=ring,
        view=view,
        heartbeat=heartbeat,
        slots=slots,
        catalog=catalog,
        manager=manager,
        reconciler=reconciler,
        lease_fence=lease_fence,
        accounts=accounts,
        storage=storage,
        storage_health=storage_health,
        quarantine=quarantine,
        access=access,
        webhooks=webhook_hub,
        webhook_directory=webhook_directory,
    )
    return NodeServer(config=config, address=address, parts=parts)


def _draining_publisher(
    heartbeat: Heartbeat, manager: SessionManager
) -> Callable[[bool], Awaitable[None]]:
    async def publish_draining(is_draining: bool) -> None:
        state = DRAINING if is_draining else ACTIVE
        try:
            record = replace(heartbeat.record, state=state, load=manager.hosted_count)
            await heartbeat.update(record)
        except Unavailable as error:
            _log.warning("node_state_publish_failed", state=state, error=error)

    return publish_draining


async def _first_pass(
    node_id: str, membership: MembershipWatcher, view: OwnershipView, reconciler: Reconciler
) -> None:
    """Run the reconciler's first pass to completion, then keep it running."""
    # Placement must see this node before the first pass, or it gives it nothing.
    try:
        await membership.wait_until(
            lambda nodes: node_id in nodes, timeout_seconds=START_TIMEOUT_SECONDS
        )
    except TimeoutError as error:
        raise Unavailable(f"node {node_id} never saw itself in etcd") from error
    membership.subscribe(reconciler.poke)
    view.subscribe(reconciler.poke)
    # A started node already serves (and has restored) what placement gives it.
    await reconciler.run_once()
    await reconciler.settle()
    reconciler.start()
