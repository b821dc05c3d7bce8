"""A request that does not parse ends as INVALID_ARGUMENT, like every other bad input.

grpc.aio answers a request its deserializer refuses — a string field that is not UTF-8, a
truncated message — with UNKNOWN and the parser's exception. The interceptor here gives the
handler a lenient deserializer instead, and answers such a request with INVALID_ARGUMENT
naming what did not parse, before the handler runs: nothing is touched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from registry.errors import InvalidInput
from registry.status import Context, abort_with

if TYPE_CHECKING:
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]
else:  # grpc's runtime classes are not generic; only its stubs are
    Continuation = Callable


class _Undecodable:
    """What the lenient deserializer hands on for bytes that do not parse."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidInput) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # whatever the parser raises: the bytes are the caller's
            return _Undecodable(InvalidInput(f"request does not parse: {error}"))

    return deserialize


class UndecodableRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Answers requests that do not parse with INVALID_ARGUMENT (see the module docstring)."""

    def __init__(self) -> None:
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler[Any, Any], Any]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The call's handler, with a deserializer that never raises."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = cached[1]
            return wrapped
        wrapped = _wrap(handler)
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    # grpc's stubs type handlers for the synchronous server; on grpc.aio they are async.
    deserializer = _lenient(handler.request_deserializer)  # type: ignore[arg-type]
    if handler.unary_unary is not None:
        inner_unary: Any = handler.unary_unary

        async def unary(request: Any, context: Context) -> Any:
            if isinstance(request, _Undecodable):
                await abort_with(context, request.error)
            return await inner_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_stream: Any = handler.unary_stream

        def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            # The handler's own generator when the request parsed: no layer per response.
            if isinstance(request, _Undecodable):
                return _refused(request.error, context)
            responses: AsyncIterator[Any] = inner_stream(request, context)
            return responses

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # client or bidirectional streams: not used by this API


async def _refused(error: InvalidInput, context: Context) -> AsyncIterator[Any]:
    await abort_with(context, error)
    yield  # pragma: no cover - abort always raises; the yield makes this a generator
