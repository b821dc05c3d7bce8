"""The access check in front of a server's handlers: ``SessionService`` calls need a token
for the request's workspace, admin services an admin token; health and reflection stay open.

Placed before :class:`registry.UndecodableRequestInterceptor`, it sees the request after the
lenient deserializer: a request that does not parse is still refused to a caller without a
valid token (``UNAUTHENTICATED``) before anyone learns it did not parse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from registry.auth.policy import Access, TokenAccess, bearer_of
from registry.errors import MeshError
from registry.status import Context, abort_with

if TYPE_CHECKING:
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]
else:  # grpc's runtime classes are not generic; only its stubs are
    Continuation = Callable

_Check = Callable[[Any, Context], None]


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Checks each call of the named services against ``access`` before its handler runs;
    without ``access`` (set :attr:`access` later) every such call is refused."""

    def __init__(
        self,
        access: Access | None = None,
        *,
        workspace_services: Iterable[str] = (),
        admin_services: Iterable[str] = (),
    ) -> None:
        self.access: Access = access if access is not None else TokenAccess({})
        """The policy the checks ask (read per call, so it may be set after start-up)."""
        self._workspace_prefixes = tuple(f"/{name}/" for name in workspace_services)
        self._admin_prefixes = tuple(f"/{name}/" for name in admin_services)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], Any]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The call's handler, behind the check its service needs (if any)."""
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None:
            return handler
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = cached[1]
            return wrapped
        check = self._check_for(path)
        if check is None:
            return handler
        wrapped = _wrap(handler, check)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _check_for(self, path: str) -> _Check | None:
        method = path.rpartition("/")[2]
        if path.startswith(self._workspace_prefixes):

            def check_workspace(request: Any, context: Context) -> None:
                bearer = bearer_of(context.invocation_metadata())
                workspace_id = getattr(request, "workspace_id", None)
                if isinstance(workspace_id, str):
                    self.access.check_workspace(bearer, method, workspace_id)
                else:  # did not parse: the caller must still be someone
                    self.access.authenticate(bearer)

            return check_workspace
        if path.startswith(self._admin_prefixes):

            def check_admin(request: Any, context: Context) -> None:
                self.access.check_admin(bearer_of(context.invocation_metadata()), method)

            return check_admin
        return None


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], check: _Check
) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.unary_unary is not None:
        inner_unary: Any = handler.unary_unary

        async def unary(request: Any, context: Context) -> Any:
            try:
                check(request, context)
            except MeshError as error:
                await abort_with(context, error)
            return await inner_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_stream: Any = handler.unary_stream

        def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                check(request, context)
            except MeshError as error:
                return _refused(error, context)
            responses: AsyncIterator[Any] = inner_stream(request, context)
            return responses

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # client or bidirectional streams: not used by this API


async def _refused(error: MeshError, context: Context) -> AsyncIterator[Any]:
    await abort_with(context, error)
    yield  # pragma: no cover - abort always raises; the yield makes this a generator
