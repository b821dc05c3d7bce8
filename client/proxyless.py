"""A proxyless ``SessionService`` client: it resolves each workspace's owner itself and calls
that node directly, with no gateway hop.

It follows membership and the owners map through watches on its own etcd client, so a call is
a few dict lookups and one RPC, never an etcd read. Recoveries match the gateway's: a
``FAILED_PRECONDITION`` naming the owner is re-sent there (at once the first time, then after a
backoff following the views again), and ``UNAVAILABLE`` / ``CANCELLED`` are retried per
:class:`gateway.retry.RetryPolicy` within the caller's deadline, honouring the server's
``sessionmesh-retry-after-ms``. Any other failure raises the node's ``grpc.aio.AioRpcError``
unchanged, exactly as the generated ``SessionServiceStub`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

import aetcd
import grpc
from google.protobuf.message import Message

from gateway.retry import DEFAULT_RETRY_POLICY, RetryPolicy, next_delay_seconds
from protos import SESSION_SERVICE_NAME, session_pb2
from registry.errors import OWNER_METADATA_KEY, MeshError
from registry.keys import ClusterKeys
from registry.membership import MembershipWatcher, NodeRecord, connect_etcd
from registry.ownership import OwnershipView
from registry.placement import resolve_node
from registry.routing import RoutingTable
from telemetry.tracing import client_interceptors

_log = logging.getLogger(__name__)

MetadataPairs = tuple[tuple[str, str | bytes], ...]
_Response = TypeVar("_Response", bound=Message)


class _WorkspaceRequest(Protocol):
    """Every SessionService request names its workspace."""

    workspace_id: str

    def SerializeToString(self) -> bytes: ...


def _owner_address(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``host:port`` of ``sessionmesh-owner: <node_id>@<host:port>``, if present."""
    for key, value in trailing_metadata or ():
        if key == OWNER_METADATA_KEY:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            _, separator, address = text.partition("@")
            return address if separator and address else None
    return None


class _Attempts:
    """Where one call goes next after each failure: the named owner once, then retries.

    Mirrors ``gateway.forwarder._Attempts`` with the client's own deadline instead of a server
    context's.
    """

    def __init__(
        self, client: ProxylessClient, workspace_id: str, timeout_seconds: float | None
    ) -> None:
        self._client = client
        self._workspace_id = workspace_id
        loop = asyncio.get_running_loop()
        self._deadline = None if timeout_seconds is None else loop.time() + timeout_seconds
        self._retry_count = 0
        self._refused_addresses: set[str] = set()
        self.address: str | None = None

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (None: no deadline)."""
        if self._deadline is None:
            return None
        return max(self._deadline - asyncio.get_running_loop().time(), 0.0)

    async def first_address(self) -> str:
        """Resolve the owner from the views; while none can serve, wait within the deadline."""
        while True:
            try:
                self.address = self._client.route(self._workspace_id).address
                return self.address
            except MeshError as error:
                if not await self._wait_for_retry(grpc.StatusCode.UNAVAILABLE, None):
                    raise error

    async def should_try_again(self, error: grpc.aio.AioRpcError) -> bool:
        """Pick the next address (after a wait if needed) if ``error`` allows another try."""
        trailing = cast("MetadataPairs", tuple(error.trailing_metadata() or ()))
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return await self._redirect(trailing)
        if not await self._wait_for_retry(error.code(), trailing):
            return False
        # The slot may have moved or its node left meanwhile: follow the views again, except
        # back to a node that already said it is not the owner.
        with contextlib.suppress(MeshError):
            address = self._client.route(self._workspace_id).address
            if address not in self._refused_addresses:
                self.address = address
        return True

    async def _wait_for_retry(self, code: grpc.StatusCode, trailing: MetadataPairs | None) -> bool:
        self._retry_count += 1
        delay_seconds = next_delay_seconds(
            self._client.retry_policy,
            attempt=self._retry_count,
            code=code,
            trailing_metadata=trailing,
            time_remaining_seconds=self.time_remaining(),
        )
        if delay_seconds is None:
            return False
        await asyncio.sleep(delay_seconds)
        return True

    async def _redirect(self, trailing: MetadataPairs) -> bool:
        """After ``FAILED_PRECONDITION`` (the node did nothing): go to the owner it named, at
        once the first time; otherwise wait a backoff and follow the views again."""
        if self.address is not None:
            self._refused_addresses.add(self.address)
        owner_address = _owner_address(trailing)
        if owner_address is not None and owner_address not in self._refused_addresses:
            self.address = owner_address
            return True
        policy = self._client.retry_policy
        self._retry_count += 1
        delay_seconds = policy.backoff_ms(self._retry_count) / 1000
        time_remaining_seconds = self.time_remaining()
        if (time_remaining_seconds is None and self._retry_count >= policy.max_attempts) or (
            time_remaining_seconds is not None and delay_seconds >= time_remaining_seconds
        ):
            _log.warning(
                "proxyless_redirect_gave_up workspace_id=%s refused_by=%s named=%s",
                self._workspace_id,
                sorted(self._refused_addresses),
                owner_address,
            )
            return False
        await asyncio.sleep(delay_seconds)
        self._refused_addresses.clear()  # after the wait, every view may have moved on
        with contextlib.suppress(MeshError):
            self.address = self._client.route(self._workspace_id).address
        return True


class ProxylessClient:
    """Calls ``SessionService`` on the owning node directly; same method names and call shape
    (``request, *, timeout=None, metadata=None``) as the generated ``SessionServiceStub``.

    Raises the node's ``grpc.aio.AioRpcError`` unchanged when retries do not help, and
    ``registry.errors.Unavailable`` when no live node can serve the workspace by the deadline.
    """

    def __init__(
        self,
        etcd: aetcd.Client,
        *,
        cluster: str,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> None:
        keys = ClusterKeys(cluster)
        self._etcd = etcd
        self._cluster = cluster
        self.retry_policy = retry_policy
        self._watcher = MembershipWatcher(etcd, keys)
        self._ownership = OwnershipView(etcd, keys)
        self._routing = RoutingTable()
        self._nodes: dict[str, NodeRecord] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._is_subscribed = False

    @classmethod
    async def connect(
        cls,
        *,
        etcd_endpoints: str,
        cluster: str,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> ProxylessClient:
        """Connect to etcd and load membership and ownership; ``Unavailable`` if etcd is not
        there (whatever was opened is closed again)."""
        etcd = await connect_etcd(etcd_endpoints)
        client = cls(etcd, cluster=cluster, retry_policy=retry_policy)
        try:
            await client._start()
        except BaseException:
            await client.close()
            raise
        return client

    async def _start(self) -> None:
        await self._watcher.start()
        await self._ownership.start()
        self._watcher.subscribe(self._on_members)
        self._is_subscribed = True

    async def close(self) -> None:
        """Close every channel, stop the views and close the etcd client."""
        if self._is_subscribed:
            self._watcher.unsubscribe(self._on_members)
            self._is_subscribed = False
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._ownership.stop()
        await self._watcher.stop()
        await self._etcd.close()

    async def __aenter__(self) -> ProxylessClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def ownership(self) -> OwnershipView:
        """The watch-fed owners map."""
        return self._ownership

    def route(self, workspace_id: str) -> NodeRecord:
        """The node this client sends ``workspace_id``'s calls to now (from the views)."""
        return resolve_node(
            workspace_id,
            routing=self._routing,
            nodes=self._nodes,
            ownership=self._ownership,
            cluster=self._cluster,
        )

    def _channel_for(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, interceptors=client_interceptors())
            self._channels[address] = channel
        return channel

    def _on_members(self, nodes: dict[str, NodeRecord]) -> None:
        self._routing.update(nodes)
        self._nodes = nodes
        live_addresses = {node.address for node in nodes.values()}
        for address in [address for address in self._channels if address not in live_addresses]:
            channel = self._channels.pop(address)
            # A callback cannot await: the close runs as a task that close() waits for.
            task = asyncio.get_running_loop().create_task(self._close_channel(channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_channel(channel: grpc.aio.Channel) -> None:
        # Calls still in flight on a departed node get a short grace to finish.
        with contextlib.suppress(Exception):
            await channel.close(grace=1.0)

    async def _unary(
        self,
        method: str,
        request: _WorkspaceRequest,
        response_type: type[_Response],
        timeout_seconds: float | None,
        metadata: Any,
    ) -> _Response:
        attempts = _Attempts(self, request.workspace_id, timeout_seconds)
        address = await attempts.first_address()
        path = f"/{SESSION_SERVICE_NAME}/{method}"
        while True:
            call = self._channel_for(address).unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            try:
                return cast(
                    "_Response",
                    await call(request, timeout=attempts.time_remaining(), metadata=metadata),
                )
            except grpc.aio.AioRpcError as error:
                if not await attempts.should_try_again(error):
                    raise
                assert attempts.address is not None
                address = attempts.address

    def CreateSession(
        self,
        request: session_pb2.CreateSessionRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[session_pb2.Session]:
        """Create a session on its workspace's owner."""
        return self._unary("CreateSession", request, session_pb2.Session, timeout, metadata)

    def GetSession(
        self,
        request: session_pb2.GetSessionRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[session_pb2.Session]:
        """Read a session from its workspace's owner."""
        return self._unary("GetSession", request, session_pb2.Session, timeout, metadata)

    def ListSessions(
        self,
        request: session_pb2.ListSessionsRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[session_pb2.ListSessionsResponse]:
        """List a workspace's sessions from its owner."""
        return self._unary(
            "ListSessions", request, session_pb2.ListSessionsResponse, timeout, metadata
        )

    def DeleteSession(
        self,
        request: session_pb2.DeleteSessionRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[session_pb2.Session]:
        """Delete a session on its workspace's owner."""
        return self._unary("DeleteSession", request, session_pb2.Session, timeout, metadata)

    def GetQrCode(
        self,
        request: session_pb2.GetQrCodeRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[session_pb2.QrCode]:
        """Read a session's current pairing code from its workspace's owner."""
        return self._unary("GetQrCode", request, session_pb2.QrCode, timeout, metadata)

    def SendMessage(
        self,
        request: session_pb2.SendMessageRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[session_pb2.SendMessageResponse]:
        """Send a message through a session on its workspace's owner (idempotent by id)."""
        return self._unary(
            "SendMessage", request, session_pb2.SendMessageResponse, timeout, metadata
        )

    def WatchSession(
        self,
        request: session_pb2.WatchSessionRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> AsyncIterator[session_pb2.SessionEvent]:
        """Stream a session's events (a snapshot first) from its workspace's owner.

        Failures before the first event are retried like unary calls; once an event arrived
        the stream cannot be replayed elsewhere, so a later failure raises.
        """
        return self._watch(request, timeout, metadata)

    async def _watch(
        self,
        request: session_pb2.WatchSessionRequest,
        timeout_seconds: float | None,
        metadata: Any,
    ) -> AsyncIterator[session_pb2.SessionEvent]:
        attempts = _Attempts(self, request.workspace_id, timeout_seconds)
        address = await attempts.first_address()
        path = f"/{SESSION_SERVICE_NAME}/WatchSession"
        has_received = False
        while True:
            call = self._channel_for(address).unary_stream(
                path,
                request_serializer=session_pb2.WatchSessionRequest.SerializeToString,
                response_deserializer=session_pb2.SessionEvent.FromString,
            )(request, timeout=attempts.time_remaining(), metadata=metadata)
            try:
                async for event in call:
                    has_received = True
                    yield cast("session_pb2.SessionEvent", event)
                return
            except grpc.aio.AioRpcError as error:
                if has_received or not await attempts.should_try_again(error):
                    raise
                assert attempts.address is not None
                address = attempts.address
            finally:
                # The caller stopped iterating (or we gave up): stop the node's stream too.
                call.cancel()
