"""Start and stop a gateway: etcd membership and ownership → router, forwarding handler, admin
service, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib

import aetcd
import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.admin import AdminServicer
from gateway.config import GatewayConfig
from gateway.forwarder import ForwardingHandler
from gateway.tokens import TokenServicer
from gateway.webhooks import WebhookAdminServicer
from protos import (
    ADMIN_SERVICE_NAME,
    SESSION_SERVICE_NAME,
    TOKEN_SERVICE_NAME,
    WEBHOOK_ADMIN_SERVICE_NAME,
    WEBHOOK_SERVICE_NAME,
    admin_pb2_grpc,
    token_pb2_grpc,
    webhook_pb2_grpc,
)
from registry import (
    ClusterKeys,
    MembershipWatcher,
    NodeRecord,
    OwnershipView,
    Unavailable,
    connect_etcd,
    forwarding_channel_options,
    parse_host_port,
    server_options,
)
from registry.auth import (
    AccessControl,
    AccessInterceptor,
    open_access,
)
from routing import Router
from telemetry import HealthServicer, new_health_servicer

_log = structlog.get_logger(__name__)


class GatewayServer:
    """A running gateway. Stop it with ``stop()``; everything it opened is closed then."""

    def __init__(
        self,
        *,
        address: str,
        server: grpc.aio.Server,
        health_servicer: HealthServicer,
        router: Router,
        watcher: MembershipWatcher,
        ownership: OwnershipView,
        etcd: aetcd.Client,
        access: AccessControl,
    ) -> None:
        self._address = address
        self._access = access
        self._server = server
        self._health = health_servicer
        self._router = router
        self._watcher = watcher
        self._ownership = ownership
        self._etcd = etcd
        self._is_stopped = False

    @property
    def address(self) -> str:
        """The bound ``host:port`` (port 0 resolved)."""
        return self._address

    @property
    def router(self) -> Router:
        """The router: resolver and channel pool."""
        return self._router

    async def stop(self, *, grace_seconds: float = 5.0) -> None:
        """Stop taking calls, let calls in flight finish within ``grace_seconds``, close
        channels, the watches and etcd. Safe to call twice."""
        if self._is_stopped:
            return
        self._is_stopped = True
        _log.info("gateway_stopping", address=self._address)
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_seconds)
        await self._router.stop()
        await self._access.stop()
        await self._ownership.stop()
        await self._watcher.stop()
        await self._etcd.close()

    async def wait_for_termination(self) -> None:
        """Return when the gRPC server has stopped."""
        await self._server.wait_for_termination()


class _ServiceHealth:
    """Health of ``sessionmesh.v1.SessionService`` on the gateway: SERVING while at least one
    active node can take calls, NOT_SERVING otherwise (the process itself, service ``""``,
    stays SERVING), so a load balancer can tell "gateway up, mesh empty" apart."""

    def __init__(self, servicer: HealthServicer) -> None:
        self._servicer = servicer
        self._is_serving: bool | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def nodes_changed(self, nodes: dict[str, NodeRecord]) -> None:
        is_serving = any(record.is_active for record in nodes.values())
        if is_serving == self._is_serving:
            return
        self._is_serving = is_serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if is_serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.get_running_loop().create_task(
            self._servicer.set(SESSION_SERVICE_NAME, status)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def start_gateway(config: GatewayConfig) -> GatewayServer:
    """Start a gateway as ``config`` says; raises ``Unavailable`` if etcd or the port is not
    there. Whatever was opened before a failure is closed again."""
    host, _ = parse_host_port(config.listen_address, field="listen_address", allow_empty_host=True)
    async with contextlib.AsyncExitStack() as cleanup:
        etcd = await connect_etcd(config.etcd_endpoints, tls=config.etcd_tls)
        cleanup.push_async_callback(etcd.close)
        keys = ClusterKeys(config.cluster)
        watcher = MembershipWatcher(etcd, keys)
        await watcher.start()
        cleanup.push_async_callback(watcher.stop)
        ownership = OwnershipView(etcd, keys)
        await ownership.start()
        cleanup.push_async_callback(ownership.stop)
        router = Router(
            watcher,
            ownership,
            cluster=config.cluster,
            credentials=None if config.tls is None else config.tls.channel_credentials(),
            channel_options=forwarding_channel_options(config.max_message_bytes),
        )
        router.start()
        cleanup.push_async_callback(router.stop)
        access = await open_access(config.auth, etcd, keys, process="gateway")
        cleanup.push_async_callback(access.stop)

        server = grpc.aio.server(
            # SessionService calls are checked by the forwarding handler, which reads the
            # workspace from the raw bytes it forwards; the admin services by the interceptor.
            interceptors=[
                AccessInterceptor(
                    access.access,
                    admin_services=(
                        ADMIN_SERVICE_NAME,
                        TOKEN_SERVICE_NAME,
                        WEBHOOK_ADMIN_SERVICE_NAME,
                    ),
                )
            ],
            options=server_options(
                config.max_message_bytes,
                max_streams_per_connection=config.max_streams_per_connection,
            ),
        )
        cleanup.push_async_callback(server.stop, None)
        try:
            if config.tls is None:
                port = server.add_insecure_port(config.listen_address)
            else:  # TLS only; a client certificate is optional on the public listener
                credentials = config.tls.server_credentials(require_client_certificate=False)
                port = server.add_secure_port(config.listen_address, credentials)
        except RuntimeError as error:
            raise Unavailable(f"cannot listen on {config.listen_address}: {error}") from error
        address = f"{host}:{port}"
        server.add_generic_rpc_handlers(
            (ForwardingHandler(router, access=access.access, label=address),)
        )
        admin = AdminServicer(
            router=router, ownership=ownership, etcd=etcd, keys=keys, label=address
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)  # type: ignore[no-untyped-call]
        tokens = TokenServicer(etcd=etcd, keys=keys)
        token_pb2_grpc.add_TokenServiceServicer_to_server(tokens, server)  # type: ignore[no-untyped-call]
        default_webhook = WebhookAdminServicer(
            etcd=etcd, keys=keys, allow_private=config.webhook_allow_private
        )
        webhook_pb2_grpc.add_WebhookAdminServiceServicer_to_server(default_webhook, server)  # type: ignore[no-untyped-call]
        health_servicer = new_health_servicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (
                SESSION_SERVICE_NAME,
                WEBHOOK_SERVICE_NAME,
                ADMIN_SERVICE_NAME,
                TOKEN_SERVICE_NAME,
                WEBHOOK_ADMIN_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        follower = _ServiceHealth(health_servicer)
        watcher.subscribe(follower.nodes_changed)
        cleanup.callback(watcher.unsubscribe, follower.nodes_changed)
        cleanup.pop_all()  # started: from here GatewayServer.stop closes everything
    return GatewayServer(
        address=address,
        server=server,
        health_servicer=health_servicer,
        router=router,
        watcher=watcher,
        ownership=ownership,
        etcd=etcd,
        access=access,
    )
