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
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

import aetcd
import grpc
from google.protobuf.message import Message

from gateway.retry import DEFAULT_RETRY_POLICY, Attempts, RetryPolicy
from protos import SESSION_SERVICE_NAME, session_pb2
from registry.errors import MeshError
from registry.keys import ClusterKeys
from registry.membership import MembershipWatcher, NodeRecord, connect_etcd
from registry.ownership import OwnershipView
from registry.placement import resolve_node
from registry.routing import RoutingTable
from telemetry.hop import with_trace_context

_log = logging.getLogger(__name__)

MetadataPairs = tuple[tuple[str, str | bytes], ...]
_Response = TypeVar("_Response", bound=Message)


def _trailing(error: grpc.aio.AioRpcError) -> MetadataPairs:
    return cast("MetadataPairs", tuple(error.trailing_metadata() or ()))


class _WorkspaceRequest(Protocol):
    """Every SessionService request names its workspace."""

    workspace_id: str

    def SerializeToString(self) -> bytes: ...


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
        self._unary_callers: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}
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
        self._unary_callers.clear()
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
            channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
        return channel

    def _on_members(self, nodes: dict[str, NodeRecord]) -> None:
        self._routing.update(nodes)
        self._nodes = nodes
        live_addresses = {node.address for node in nodes.values()}
        for address in [address for address in self._channels if address not in live_addresses]:
            channel = self._channels.pop(address)
            for key in [key for key in self._unary_callers if key[0] == address]:
                del self._unary_callers[key]
            # A callback cannot await: the close runs as a task that close() waits for.
            task = asyncio.get_running_loop().create_task(self._close_channel(channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_channel(channel: grpc.aio.Channel) -> None:
        # Calls still in flight on a departed node get a short grace to finish.
        with contextlib.suppress(Exception):
            await channel.close(grace=1.0)

    def _route_address(self, workspace_id: str) -> str:
        return self.route(workspace_id).address

    def _attempts(self, workspace_id: str, address: str | None, deadline: float | None) -> Attempts:
        loop = asyncio.get_running_loop()

        def time_remaining() -> float | None:
            return None if deadline is None else max(deadline - loop.time(), 0.0)

        return Attempts(
            workspace_id=workspace_id,
            address=address,
            route=self._route_address,
            time_remaining=time_remaining,
            policy=self.retry_policy,
        )

    def _first_address(self, workspace_id: str) -> str | None:
        try:
            return self.route(workspace_id).address
        except MeshError:
            return None  # no node can serve it now: Attempts waits within the deadline

    def _unary_caller(
        self, address: str, method: str, request_type: type[Message], response_type: type[Message]
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        caller = self._unary_callers.get((address, method))
        if caller is None:
            caller = self._channel_for(address).unary_unary(
                f"/{SESSION_SERVICE_NAME}/{method}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            self._unary_callers[(address, method)] = caller
        return caller

    async def _unary(
        self,
        method: str,
        request: _WorkspaceRequest,
        response_type: type[_Response],
        timeout_seconds: float | None,
        metadata: Any,
    ) -> _Response:
        deadline = (
            None if timeout_seconds is None else asyncio.get_running_loop().time() + timeout_seconds
        )
        metadata = with_trace_context(metadata)
        address = self._first_address(request.workspace_id)
        attempts: Attempts | None = None
        if address is None:
            attempts = self._attempts(request.workspace_id, None, deadline)
            address = await attempts.first_address()
        request_type = cast("type[Message]", type(request))
        timeout = timeout_seconds
        while True:
            call = self._unary_caller(address, method, request_type, response_type)
            try:
                return cast("_Response", await call(request, timeout=timeout, metadata=metadata))
            except grpc.aio.AioRpcError as error:
                if attempts is None:
                    attempts = self._attempts(request.workspace_id, address, deadline)
                if not await attempts.should_try_again(error.code(), _trailing(error)):
                    raise
                address = cast("str", attempts.address)
                timeout = attempts.time_remaining()

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
        deadline = (
            None if timeout_seconds is None else asyncio.get_running_loop().time() + timeout_seconds
        )
        attempts = self._attempts(request.workspace_id, None, deadline)
        address = await attempts.first_address()
        metadata = with_trace_context(metadata)
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
                if has_received or not await attempts.should_try_again(
                    error.code(), _trailing(error)
                ):
                    raise
                address = cast("str", attempts.address)
            finally:
                # The caller stopped iterating (or we gave up): stop the node's stream too.
                call.cancel()
