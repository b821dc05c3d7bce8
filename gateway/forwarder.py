"""The forwarding handler: every ``SessionService`` and ``WebhookService`` call goes, as raw
bytes, to the node that serves its workspace (both name it in field 1 of every request).

Per call: read ``workspace_id`` from the wire bytes, route it (dict lookups on watch-fed
views), forward over the pooled channel with the caller's deadline and metadata, and hand
back the node's answer, status, details and trailing metadata unchanged. Two recoveries
happen here, invisible to callers, and cost nothing until a call fails: a
``FAILED_PRECONDITION`` naming the real owner is re-sent to it (at once the first time, after
a backoff when nodes disagree while a slot moves), and ``UNAVAILABLE`` (a handoff in
progress) is retried within the caller's deadline — both decided by :class:`routing.Attempts`,
which the proxyless client follows too.

The hop is traced by :class:`telemetry.hop.HopTracer` rather than interceptors, and the
metric children are bound once per method: profiling showed both dominating the hop before.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc

from gateway import metrics
from gateway.wire import workspace_id_of
from protos import session_pb2, webhook_pb2
from registry import (
    OWNER_METADATA_KEY,
    InvalidInput,
    MeshError,
    rpc_boundary,
)
from registry.auth import (
    AUTHORIZATION_KEY,
    Access,
    bearer_text,
)
from routing import Attempts, NextAttempt, Router, closed_channels_as_errors
from telemetry import Hop, HopTracer, rpc_attributes

Context = grpc.aio.ServicerContext[object, object]
MetadataPairs = tuple[tuple[str, str | bytes], ...]

if TYPE_CHECKING:
    _GenericRpcHandler = grpc.GenericRpcHandler[bytes, bytes]
else:  # grpc's runtime class is not generic; only its stubs are
    _GenericRpcHandler = grpc.GenericRpcHandler

_TRANSPORT_KEYS = frozenset({"user-agent", "content-type", "te", "host"})
_TRANSPORT_PREFIXES = (":", "grpc-")
_END_TO_END_KEYS = frozenset({"grpc-status-details-bin", "grpc-retry-pushback-ms"})
"""``grpc-`` keys that belong to the caller, not the hop: rich error details (google.rpc.Status)
and gRPC's retry hint from a node that sheds load."""


def _is_forwardable(key: str) -> bool:
    # Transport headers belong to each hop (trace headers are split off before this).
    if key in _END_TO_END_KEYS:
        return True
    return not key.startswith(_TRANSPORT_PREFIXES) and key not in _TRANSPORT_KEYS


_ADDRESSES = re.compile(
    r"(?:ipv4|ipv6|unix|dns|unix-abstract):[^\s,;)]+"
    r"|\[[0-9a-fA-F:]+\]:\d+"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"
)
"""Addresses as gRPC's own transport errors write them (``ipv4:10.0.0.7:7001``), and bare
IPv4 and bracketed IPv6 addresses."""


def external_details(details: str, address: str) -> str:
    """An error's details as an external caller may read them: the node's address and any
    other network address replaced by ``<node>`` (a node that cannot be reached makes gRPC
    name it: the mesh's addresses are not a caller's business)."""
    if address:
        details = details.replace(address, "<node>")
    return _ADDRESSES.sub("<node>", details)


def forwardable_metadata(metadata: Iterable[Any] | None) -> MetadataPairs:
    """``metadata`` as ``(key, value)`` pairs, without transport headers, and with the owner
    trailer cut to the node's id: a node's address is the mesh's own business, not an
    external caller's (``sessionmesh-owner: node-2@10.0.0.7:7001`` reaches them as
    ``node-2``)."""
    pairs: list[tuple[str, str | bytes]] = []
    for item in metadata or ():
        key, value = cast("tuple[str, str | bytes]", tuple(item))
        if not _is_forwardable(key):
            continue
        if key == OWNER_METADATA_KEY and isinstance(value, str):
            value = value.partition("@")[0]
        pairs.append((key, value))
    return tuple(pairs)


class _Method:
    """One forwarded method: its path and its metric children, bound once."""

    def __init__(self, service: str, name: str, label: str) -> None:
        self.name = name
        self.path = f"/{service}/{name}"
        self.span_attributes = rpc_attributes(service, name)
        self.latency = metrics.FORWARD_LATENCY_SECONDS.labels(label, name)
        self.ok = metrics.FORWARDED_CALLS.labels(label, name, grpc.StatusCode.OK.name)
        self._label = label
        self.retried = metrics.RETRIES.labels(label, name).inc
        self.rerouted = metrics.REROUTES.labels(label, name).inc

    def count(self, code: grpc.StatusCode) -> None:
        if code == grpc.StatusCode.OK:
            self.ok.inc()
        else:
            metrics.FORWARDED_CALLS.labels(self._label, self.name, code.name).inc()


_FORWARDED_SERVICES = (
    session_pb2.DESCRIPTOR.services_by_name["SessionService"],
    webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"],
)


class ForwardingHandler(_GenericRpcHandler):
    """Serves every ``SessionService`` and ``WebhookService`` method by forwarding its raw
    bytes to the owning node."""

    def __init__(self, router: Router, *, access: Access, label: str = "") -> None:
        self._router = router
        self._access = access
        self._tracer = HopTracer()
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}
        methods = [
            (service.full_name, each) for service in _FORWARDED_SERVICES for each in service.methods
        ]
        for service_name, method_descriptor in methods:
            method = _Method(service_name, method_descriptor.name, label)
            if method_descriptor.server_streaming:
                self._handlers[method.path] = grpc.unary_stream_rpc_method_handler(
                    self._stream_behavior(method)
                )
            else:
                self._handlers[method.path] = grpc.unary_unary_rpc_method_handler(
                    self._unary_behavior(method)
                )

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        """The forwarding behaviour for a forwarded method, None for anything else."""
        return self._handlers.get(handler_call_details.method)

    def _start(self, request: bytes, context: Context, method: _Method) -> _Forwarding:
        """Route the call, split its metadata and open its spans."""
        fields = self._tracer.fields
        carrier: dict[str, str] = {}
        pairs: list[tuple[str, str | bytes]] = []
        bearer: str | None = None
        for key, value in context.invocation_metadata() or ():
            if key in fields:
                if isinstance(value, str):
                    carrier[key] = value
            elif _is_forwardable(key):
                pairs.append((key, value))
                if key == AUTHORIZATION_KEY:
                    bearer = bearer_text(value)
        hop = self._tracer.start(method.path, method.span_attributes, carrier)
        try:
            try:
                workspace_id = workspace_id_of(request)
            except InvalidInput:
                self._access.authenticate(bearer)  # a stranger learns nothing of the request
                raise
            # Checked here and again by the node (the token travels on with the call).
            self._access.check_workspace(bearer, method.name, workspace_id)
            address = self._router.resolve(workspace_id).address
        except MeshError as error:
            method.count(error.status_code)
            hop.end(error.status_code, error.message)
            raise  # the boundary answers with the error's status
        pairs.extend(hop.headers)
        return _Forwarding(
            router=self._router,
            method=method,
            context=context,
            workspace_id=workspace_id,
            address=address,
            metadata=tuple(pairs),
            hop=hop,
        )

    def _unary_behavior(self, method: _Method) -> Callable[[bytes, Context], Any]:
        channels = self._router.channels

        @rpc_boundary
        async def forward(request: bytes, context: Context) -> bytes:
            started_at = time.perf_counter()
            call_state = self._start(request, context, method)
            try:
                while True:
                    call = channels.unary_caller(call_state.address, method.path)(
                        request, timeout=context.time_remaining(), metadata=call_state.metadata
                    )
                    try:
                        with closed_channels_as_errors(call_state.address):
                            response = await call
                    except grpc.aio.AioRpcError as error:
                        if await call_state.should_retry(error):
                            continue
                        await call_state.give_up(error)
                    call_state.succeeded(await call.trailing_metadata())
                    return response
            except asyncio.CancelledError:
                call_state.hop.end(grpc.StatusCode.CANCELLED)  # the caller went away
                raise
            finally:
                method.latency.observe(time.perf_counter() - started_at)

        return forward

    def _stream_behavior(self, method: _Method) -> Callable[[bytes, Context], AsyncIterator[bytes]]:
        channels = self._router.channels

        @rpc_boundary
        async def forward(request: bytes, context: Context) -> AsyncIterator[bytes]:
            started_at = time.perf_counter()
            call_state = self._start(request, context, method)
            has_sent_message = False
            while True:
                call = channels.stream_caller(call_state.address, method.path)(
                    request, timeout=context.time_remaining(), metadata=call_state.metadata
                )
                try:
                    with closed_channels_as_errors(call_state.address):
                        async for message in call:
                            if not has_sent_message:
                                has_sent_message = True
                                method.latency.observe(time.perf_counter() - started_at)
                            yield message
                except grpc.aio.AioRpcError as error:
                    # Once a message went out the stream cannot be replayed elsewhere.
                    if not has_sent_message and await call_state.should_retry(error):
                        continue
                    await call_state.give_up(error)
                except BaseException:
                    # The caller went away: end the spans (the node's stream is cancelled below).
                    call_state.hop.end(grpc.StatusCode.CANCELLED)
                    raise
                finally:
                    # The caller went away (or we gave up): stop the node's stream too.
                    call.cancel()
                if not has_sent_message:
                    method.latency.observe(time.perf_counter() - started_at)
                call_state.succeeded(await call.trailing_metadata())
                return

        return forward


class _Forwarding:
    """One forwarded call: where it goes, its retry state (built on its first failure only),
    its spans, and how it ends for the caller."""

    __slots__ = ("_attempts", "_context", "_method", "_router", "address", "hop", "metadata",
                 "workspace_id")  # fmt: skip

    def __init__(
        self,
        *,
        router: Router,
        method: _Method,
        context: Context,
        workspace_id: str,
        address: str,
        metadata: MetadataPairs,
        hop: Hop,
    ) -> None:
        self._router = router
        self._method = method
        self._context = context
        self._attempts: Attempts | None = None
        self.workspace_id = workspace_id
        self.address = address
        self.metadata = metadata
        self.hop = hop

    async def should_retry(self, error: grpc.aio.AioRpcError) -> bool:
        """After a failed attempt: whether to send the call again (to ``address``, updated)."""
        if self._attempts is None:
            remaining = self._context.time_remaining()
            deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
            self._attempts = self._router.attempts(
                self.workspace_id, address=self.address, deadline=deadline
            )
        next_attempt: NextAttempt | None = await self._attempts.after_failure(error)
        if next_attempt is None:
            return False
        (self._method.rerouted if next_attempt.is_reroute else self._method.retried)()
        self.address = next_attempt.address
        return True

    async def give_up(self, error: grpc.aio.AioRpcError) -> NoReturn:
        """End the caller's call exactly as the node ended ours."""
        code = error.code()
        self._method.count(code)
        self.hop.end(code, error.details() or "")  # the span keeps what the node said
        trailing = forwardable_metadata(error.trailing_metadata())
        if trailing:
            self._context.set_trailing_metadata(trailing)
        await self._context.abort(code, external_details(error.details() or "", self.address))
        raise AssertionError("context.abort returned") from error

    def succeeded(self, trailing_metadata: Any) -> None:
        """The node answered: hand its trailers back, count and end the spans."""
        trailing = forwardable_metadata(trailing_metadata)
        if trailing:
            self._context.set_trailing_metadata(trailing)
        self._method.ok.inc()
        self.hop.end(grpc.StatusCode.OK)
