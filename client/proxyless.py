"""A proxyless ``SessionService`` client: it resolves each workspace's owner itself and calls
that node directly, with no gateway hop.

It follows membership and the owners map through watches on its own etcd client and routes
with the same :class:`routing.Router` as the gateway, so a call is a few dict lookups and one
RPC, never an etcd read. Recoveries match the gateway's (:class:`routing.Attempts`): a
``FAILED_PRECONDITION`` naming the owner is re-sent there, and ``UNAVAILABLE`` / ``CANCELLED``
are retried within the caller's deadline, honouring the server's
``sessionmesh-retry-after-ms``. Any other failure raises the node's ``grpc.aio.AioRpcError``
unchanged, exactly as the generated ``SessionServiceStub`` would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

import aetcd
import grpc
from google.protobuf.message import Message

from protos import SESSION_SERVICE_NAME, WEBHOOK_SERVICE_NAME, session_pb2, webhook_pb2
from registry import (
    ClusterKeys,
    EtcdTls,
    MembershipWatcher,
    MeshError,
    NodeRecord,
    OwnershipView,
    TlsMaterial,
    connect_etcd,
)
from registry.auth import (
    AUTHORIZATION_KEY,
    bearer_metadata,
)
from routing import DEFAULT_RETRY_POLICY, Attempts, RetryPolicy, Router, closed_channels_as_errors
from telemetry import with_trace_context

_Response = TypeVar("_Response", bound=Message)


class _WorkspaceRequest(Protocol):
    """Every SessionService request names its workspace."""

    workspace_id: str

    def SerializeToString(self) -> bytes: ...


def _path(method: str, service: str = SESSION_SERVICE_NAME) -> str:
    return f"/{service}/{method}"


class ProxylessClient:
    """Calls ``SessionService`` on the owning node directly; same method names and call shape
    (``request, *, timeout=None, metadata=None``) as the generated ``SessionServiceStub``.

    Raises the node's ``grpc.aio.AioRpcError`` unchanged when retries do not help, and
    ``registry.Unavailable`` when no live node can serve the workspace by the deadline.
    """

    def __init__(
        self,
        etcd: aetcd.Client,
        *,
        cluster: str,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        tls: TlsMaterial | None = None,
        token: str = "",
    ) -> None:
        keys = ClusterKeys(cluster)
        self._etcd = etcd
        self._token_metadata = bearer_metadata(token) if token else ()
        self._watcher = MembershipWatcher(etcd, keys)
        self._ownership = OwnershipView(etcd, keys)
        self._router = Router(
            self._watcher,
            self._ownership,
            cluster=cluster,
            retry_policy=retry_policy,
            credentials=None if tls is None else tls.channel_credentials(),
        )

    @classmethod
    async def connect(
        cls,
        *,
        etcd_endpoints: str,
        cluster: str,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        tls: TlsMaterial | None = None,
        token: str = "",
        etcd_tls: EtcdTls | None = None,
    ) -> ProxylessClient:
        """Connect to etcd and load membership and ownership; ``Unavailable`` if etcd is not
        there (whatever was opened is closed again). ``tls``: the mesh certificate nodes
        serving mutual TLS ask for (``registry.tls.load_tls``); ``token``: the bearer token
        sent with every call (nodes check it as the gateway does); ``etcd_tls``: the client
        certificate for an etcd that asks for one (``registry.load_etcd_tls``)."""
        etcd = await connect_etcd(etcd_endpoints, tls=etcd_tls)
        client = cls(etcd, cluster=cluster, retry_policy=retry_policy, tls=tls, token=token)
        try:
            await client._start()
        except BaseException:
            await client.close()
            raise
        return client

    async def _start(self) -> None:
        await self._watcher.start()
        await self._ownership.start()
        self._router.start()

    async def close(self) -> None:
        """Close every channel, stop the views and close the etcd client."""
        await self._router.stop()
        await self._ownership.stop()
        await self._watcher.stop()
        await self._etcd.close()

    async def __aenter__(self) -> ProxylessClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def ownership(self) -> OwnershipView:
        """The watch-fed owners map."""
        return self._ownership

    @property
    def retry_policy(self) -> RetryPolicy:
        """How failed calls are retried."""
        return self._router.retry_policy

    def route(self, workspace_id: str) -> NodeRecord:
        """The node this client sends ``workspace_id``'s calls to now (from the views)."""
        return self._router.resolve(workspace_id)

    def _metadata(self, metadata: Any) -> Any:
        """The caller's metadata, with this client's token (unless the caller sent one) and
        the trace context."""
        if not self._token_metadata:
            return with_trace_context(metadata)
        pairs = tuple(metadata or ())
        if not any(key == AUTHORIZATION_KEY for key, _ in pairs):
            pairs = (*pairs, *self._token_metadata)
        return with_trace_context(pairs)

    def _deadline(self, timeout_seconds: float | None) -> float | None:
        if timeout_seconds is None:
            return None
        return asyncio.get_running_loop().time() + timeout_seconds

    def _first_address(self, workspace_id: str) -> str | None:
        try:
            return self._router.resolve(workspace_id).address
        except MeshError:
            return None  # no node can serve it now: Attempts waits within the deadline

    async def _unary(
        self,
        method: str,
        request: _WorkspaceRequest,
        response_type: type[_Response],
        timeout_seconds: float | None,
        metadata: Any,
        *,
        service: str = SESSION_SERVICE_NAME,
    ) -> _Response:
        deadline = self._deadline(timeout_seconds)
        metadata = self._metadata(metadata)
        workspace_id = request.workspace_id
        address = self._first_address(workspace_id)
        attempts: Attempts | None = None
        if address is None:
            attempts = self._router.attempts(workspace_id, address=None, deadline=deadline)
            address = await attempts.first_address()
        payload = request.SerializeToString()
        path = _path(method, service)
        timeout = timeout_seconds
        while True:
            call = self._router.channels.unary_caller(address, path)
            try:
                with closed_channels_as_errors(address):
                    reply = await call(payload, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                if attempts is None:
                    attempts = self._router.attempts(
                        workspace_id, address=address, deadline=deadline
                    )
                next_attempt = await attempts.after_failure(error)
                if next_attempt is None:
                    raise
                address = next_attempt.address
                timeout = attempts.time_remaining()
                continue
            return response_type.FromString(reply)

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

    def RequestPairingCode(
        self,
        request: session_pb2.RequestPairingCodeRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[session_pb2.PairingCode]:
        """Ask a session's owner for a code that pairs it by phone number (no QR scan)."""
        return self._unary(
            "RequestPairingCode", request, session_pb2.PairingCode, timeout, metadata
        )

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

    def SetWebhook(
        self,
        request: webhook_pb2.SetWebhookRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[webhook_pb2.SetWebhookResponse]:
        """Set the workspace's webhook (the answer holds its secret, once). (``WebhookService``)"""
        return self._unary(
            "SetWebhook",
            request,
            webhook_pb2.SetWebhookResponse,
            timeout,
            metadata,
            service=WEBHOOK_SERVICE_NAME,
        )

    def GetWebhook(
        self,
        request: webhook_pb2.GetWebhookRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[webhook_pb2.GetWebhookResponse]:
        """The workspace's own webhook. (``WebhookService``)"""
        return self._unary(
            "GetWebhook",
            request,
            webhook_pb2.GetWebhookResponse,
            timeout,
            metadata,
            service=WEBHOOK_SERVICE_NAME,
        )

    def DeleteWebhook(
        self,
        request: webhook_pb2.DeleteWebhookRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[webhook_pb2.DeleteWebhookResponse]:
        """Remove the workspace's webhook. (``WebhookService``)"""
        return self._unary(
            "DeleteWebhook",
            request,
            webhook_pb2.DeleteWebhookResponse,
            timeout,
            metadata,
            service=WEBHOOK_SERVICE_NAME,
        )

    def RotateWebhookSecret(
        self,
        request: webhook_pb2.RotateWebhookSecretRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[webhook_pb2.RotateWebhookSecretResponse]:
        """A new signing secret; the old one signs too for the overlap. (``WebhookService``)"""
        return self._unary(
            "RotateWebhookSecret",
            request,
            webhook_pb2.RotateWebhookSecretResponse,
            timeout,
            metadata,
            service=WEBHOOK_SERVICE_NAME,
        )

    def ListDeadLetters(
        self,
        request: webhook_pb2.ListDeadLettersRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[webhook_pb2.ListDeadLettersResponse]:
        """One page of the workspace's dead letters. (``WebhookService``)"""
        return self._unary(
            "ListDeadLetters",
            request,
            webhook_pb2.ListDeadLettersResponse,
            timeout,
            metadata,
            service=WEBHOOK_SERVICE_NAME,
        )

    def ReplayDeadLetters(
        self,
        request: webhook_pb2.ReplayDeadLettersRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[webhook_pb2.ReplayDeadLettersResponse]:
        """Deliver dead letters again. (``WebhookService``)"""
        return self._unary(
            "ReplayDeadLetters",
            request,
            webhook_pb2.ReplayDeadLettersResponse,
            timeout,
            metadata,
            service=WEBHOOK_SERVICE_NAME,
        )

    def SendTestEvent(
        self,
        request: webhook_pb2.SendTestEventRequest,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Awaitable[webhook_pb2.SendTestEventResponse]:
        """Post one test event to the workspace's webhook now. (``WebhookService``)"""
        return self._unary(
            "SendTestEvent",
            request,
            webhook_pb2.SendTestEventResponse,
            timeout,
            metadata,
            service=WEBHOOK_SERVICE_NAME,
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
        attempts = self._router.attempts(
            request.workspace_id, address=None, deadline=self._deadline(timeout_seconds)
        )
        address = await attempts.first_address()
        metadata = self._metadata(metadata)
        payload = request.SerializeToString()
        path = _path("WatchSession")
        has_received = False
        while True:
            call = self._router.channels.stream_caller(address, path)(
                payload, timeout=attempts.time_remaining(), metadata=metadata
            )
            try:
                with closed_channels_as_errors(address):
                    async for raw in call:
                        has_received = True
                        yield session_pb2.SessionEvent.FromString(raw)
                return
            except grpc.aio.AioRpcError as error:
                if has_received:
                    raise
                next_attempt = await attempts.after_failure(error)
                if next_attempt is None:
                    raise
                address = next_attempt.address
            finally:
                # The caller stopped iterating (or we gave up): stop the node's stream too.
                call.cancel()
