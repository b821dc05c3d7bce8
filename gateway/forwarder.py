"""The forwarding handler: every ``SessionService`` call goes, as raw bytes, to the node that
serves its workspace.

Per call: read ``workspace_id`` from the wire bytes, route it, forward over the pooled
channel with the caller's deadline and metadata, and hand back the node's answer, status,
details and trailing metadata unchanged. Two recoveries happen here, invisible to callers: a
``FAILED_PRECONDITION`` naming the real owner is re-sent to it (at once the first time, after
a backoff when nodes disagree while a slot moves), and ``UNAVAILABLE`` (a handoff in
progress) is retried per :class:`RetryPolicy` within the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import grpc
from opentelemetry import propagate

from gateway import metrics
from gateway.retry import DEFAULT_RETRY_POLICY, RetryPolicy, next_delay_seconds
from gateway.router import Router
from gateway.wire import workspace_id_of
from protos import SESSION_SERVICE_NAME, session_pb2
from registry.errors import OWNER_METADATA_KEY, MeshError, abort_with

Context = grpc.aio.ServicerContext[object, object]
MetadataPairs = tuple[tuple[str, str | bytes], ...]

if TYPE_CHECKING:
    _GenericRpcHandler = grpc.GenericRpcHandler[bytes, bytes]
else:  # grpc's runtime class is not generic; only its stubs are
    _GenericRpcHandler = grpc.GenericRpcHandler

_log = logging.getLogger(__name__)

_TRANSPORT_KEYS = frozenset({"user-agent", "content-type", "te", "host"})
_TRANSPORT_PREFIXES = (":", "grpc-")
_END_TO_END_KEYS = frozenset({"grpc-status-details-bin"})
"""``grpc-`` keys that belong to the caller, not the hop: rich error details (google.rpc.Status)."""


def _identity(data: bytes) -> bytes:
    return data


def _is_forwardable(key: str) -> bool:
    # Transport headers belong to each hop; the trace context is re-injected by the gateway's
    # client span, so the caller's own traceparent must not reach the node beside it.
    if key in _END_TO_END_KEYS:
        return True
    return (
        not key.startswith(_TRANSPORT_PREFIXES)
        and key not in _TRANSPORT_KEYS
        and key not in propagate.get_global_textmap().fields
    )


def forwardable_metadata(metadata: Iterable[Any] | None) -> MetadataPairs:
    """``metadata`` as ``(key, value)`` pairs, without transport and trace headers."""
    pairs: list[tuple[str, str | bytes]] = []
    for item in metadata or ():
        key, value = cast("tuple[str, str | bytes]", tuple(item))
        if _is_forwardable(key):
            pairs.append((key, value))
    return tuple(pairs)


def _owner_address(trailing_metadata: MetadataPairs) -> str | None:
    """The ``host:port`` part of ``sessionmesh-owner: <node_id>@<host:port>``, if present."""
    for key, value in trailing_metadata:
        if key == OWNER_METADATA_KEY:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            _, separator, address = text.partition("@")
            return address if separator and address else None
    return None


class _Attempts:
    """Where one call goes next, after each failure: the owner once, then retries."""

    def __init__(
        self,
        *,
        method: str,
        workspace_id: str,
        address: str,
        router: Router,
        policy: RetryPolicy,
        label: str,
    ) -> None:
        self.method = method
        self.address = address
        self._workspace_id = workspace_id
        self._router = router
        self._policy = policy
        self._label = label
        self._retry_count = 0
        self._redirect_count = 0
        self._refused_addresses: set[str] = set()

    async def should_try_again(self, error: grpc.aio.AioRpcError, context: Context) -> bool:
        """Pick the next address (and wait) if ``error`` allows another attempt."""
        trailing = forwardable_metadata(error.trailing_metadata())
        code = error.code()
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return await self._redirect(trailing, context)
        self._retry_count += 1
        delay_seconds = next_delay_seconds(
            self._policy,
            attempt=self._retry_count,
            code=code,
            trailing_metadata=trailing,
            time_remaining_seconds=context.time_remaining(),
        )
        if delay_seconds is None:
            return False
        await asyncio.sleep(delay_seconds)
        metrics.RETRIES.labels(self._label, self.method).inc()
        # The slot may have moved or its node died meanwhile: follow the watch-fed table again,
        # except back to a node that already said it is not the owner.
        with contextlib.suppress(MeshError):
            address = self._router.route(self._workspace_id).address
            if address not in self._refused_addresses:
                self.address = address
        return True

    async def _redirect(self, trailing: MetadataPairs, context: Context) -> bool:
        """After ``FAILED_PRECONDITION`` (the node did nothing): go to the owner it named.

        The first redirect to a named owner that has not refused yet is immediate. Otherwise
        (no owner named, or nodes naming each other while a slot moves) wait a backoff and
        follow the watch-fed table again: views of a moving slot converge within milliseconds.
        It gives up only when the caller's deadline would pass (or, without a deadline, after
        the policy's attempts).
        """
        self._refused_addresses.add(self.address)
        owner_address = _owner_address(trailing)
        self._redirect_count += 1
        if owner_address is not None and owner_address not in self._refused_addresses:
            metrics.REROUTES.labels(self._label, self.method).inc()
            self.address = owner_address
            return True
        self._retry_count += 1
        delay_seconds = self._policy.backoff_ms(self._retry_count) / 1000
        time_remaining_seconds = context.time_remaining()
        if (time_remaining_seconds is None and self._retry_count >= self._policy.max_attempts) or (
            time_remaining_seconds is not None and delay_seconds >= time_remaining_seconds
        ):
            _log.warning(
                "gateway_redirect_gave_up workspace_id=%s refused_by=%s named=%s",
                self._workspace_id,
                sorted(self._refused_addresses),
                owner_address,
            )
            return False
        await asyncio.sleep(delay_seconds)
        metrics.REROUTES.labels(self._label, self.method).inc()
        self._refused_addresses.clear()  # after the wait, every view may have moved on
        with contextlib.suppress(MeshError):
            self.address = self._router.route(self._workspace_id).address
        return True


class ForwardingHandler(_GenericRpcHandler):
    """Serves every ``SessionService`` method by forwarding its raw bytes to the owning node."""

    def __init__(
        self, router: Router, *, retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY, label: str = ""
    ) -> None:
        self._router = router
        self._retry_policy = retry_policy
        self._label = label
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}
        service = session_pb2.DESCRIPTOR.services_by_name["SessionService"]
        for method in service.methods:
            path = f"/{SESSION_SERVICE_NAME}/{method.name}"
            if method.server_streaming:
                self._handlers[path] = grpc.unary_stream_rpc_method_handler(
                    self._stream_behavior(path, method.name)
                )
            else:
                self._handlers[path] = grpc.unary_unary_rpc_method_handler(
                    self._unary_behavior(path, method.name)
                )

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        """The forwarding behaviour for a ``SessionService`` method, None for anything else."""
        return self._handlers.get(handler_call_details.method)

    async def _first_attempt(self, request: bytes, context: Context, method: str) -> _Attempts:
        try:
            workspace_id = workspace_id_of(request)
            node = self._router.route(workspace_id)
        except MeshError as error:
            self._count(method, error.status_code)
            await abort_with(context, error)
        return _Attempts(
            method=method,
            workspace_id=workspace_id,
            address=node.address,
            router=self._router,
            policy=self._retry_policy,
            label=self._label,
        )

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        metrics.FORWARDED_CALLS.labels(self._label, method, code.name).inc()

    def _observe(self, method: str, started_at: float) -> None:
        metrics.FORWARD_LATENCY_SECONDS.labels(self._label, method).observe(
            time.perf_counter() - started_at
        )

    async def _give_up(self, error: grpc.aio.AioRpcError, context: Context, method: str) -> None:
        """End the caller's call exactly as the node ended ours."""
        self._count(method, error.code())
        trailing = forwardable_metadata(error.trailing_metadata())
        if trailing:
            context.set_trailing_metadata(trailing)
        await context.abort(error.code(), error.details() or "")

    def _unary_behavior(self, path: str, method: str) -> Callable[[bytes, Context], Any]:
        async def forward(request: bytes, context: Context) -> bytes:
            started_at = time.perf_counter()
            attempts = await self._first_attempt(request, context, method)
            metadata = forwardable_metadata(context.invocation_metadata())
            try:
                while True:
                    channel = self._router.channel_for(attempts.address)
                    call = channel.unary_unary(
                        path, request_serializer=_identity, response_deserializer=_identity
                    )(request, timeout=context.time_remaining(), metadata=metadata)
                    try:
                        response = cast("bytes", await call)
                    except grpc.aio.AioRpcError as error:
                        if await attempts.should_try_again(error, context):
                            continue
                        await self._give_up(error, context, method)
                        raise AssertionError("context.abort returned") from error
                    trailing = forwardable_metadata(await call.trailing_metadata())
                    if trailing:
                        context.set_trailing_metadata(trailing)
                    self._count(method, grpc.StatusCode.OK)
                    return response
            finally:
                self._observe(method, started_at)

        return forward

    def _stream_behavior(
        self, path: str, method: str
    ) -> Callable[[bytes, Context], AsyncIterator[bytes]]:
        async def forward(request: bytes, context: Context) -> AsyncIterator[bytes]:
            started_at = time.perf_counter()
            attempts = await self._first_attempt(request, context, method)
            metadata = forwardable_metadata(context.invocation_metadata())
            has_sent_message = False
            while True:
                channel = self._router.channel_for(attempts.address)
                call = channel.unary_stream(
                    path, request_serializer=_identity, response_deserializer=_identity
                )(request, timeout=context.time_remaining(), metadata=metadata)
                try:
                    async for message in call:
                        if not has_sent_message:
                            has_sent_message = True
                            self._observe(method, started_at)
                        yield cast("bytes", message)
                except grpc.aio.AioRpcError as error:
                    # Once a message went out the stream cannot be replayed elsewhere.
                    if not has_sent_message and await attempts.should_try_again(error, context):
                        continue
                    await self._give_up(error, context, method)
                    raise AssertionError("context.abort returned") from error
                finally:
                    # The caller went away (or we gave up): stop the node's stream too.
                    call.cancel()
                trailing = forwardable_metadata(await call.trailing_metadata())
                if trailing:
                    context.set_trailing_metadata(trailing)
                if not has_sent_message:
                    self._observe(method, started_at)
                self._count(method, grpc.StatusCode.OK)
                return

        return forward
