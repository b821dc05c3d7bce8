"""``MeshError`` ↔ gRPC status, each way in one place.

Servers: every handler runs inside :func:`rpc_boundary` (a decorator for unary and
server-streaming handlers alike, as aetcd's ``_handle_errors`` serves coroutines and async
generators): a ``MeshError`` ends the call with its status, message and trailing metadata; an
unexpected exception ends it as INTERNAL with a generic message, the details going to the
log, never to the caller. Clients: :func:`from_rpc_error` turns a failed call back into the
``MeshError`` it stands for, with the owner and retry hints parsed from the trailers.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, NoReturn, TypeVar, cast

import grpc
import structlog

from registry.errors import (
    ERRORS_BY_CODE,
    OWNER_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    SESSION_STATE_METADATA_KEY,
    MeshError,
    NotOwner,
    Unavailable,
    WrongState,
)

_log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
MetadataPairs = Iterable[tuple[str, str | bytes]]
_Handler = TypeVar("_Handler", bound=Callable[..., Any])

INTERNAL_MESSAGE = "internal error"
"""What a caller sees of an unexpected failure (the details are logged)."""


async def abort_with(context: Context, error: MeshError) -> NoReturn:
    """End the RPC with the status, message and trailing metadata of ``error``."""
    if error.metadata:
        context.set_trailing_metadata(error.metadata)
    await context.abort(error.status_code, error.message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


async def _abort_unexpected(context: Context, method: str, error: Exception) -> NoReturn:
    _log.exception("rpc_failed", method=method, error=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def _observer(arguments: tuple[Any, ...]) -> Callable[[str, grpc.StatusCode, float], None] | None:
    # (self, request, context): a servicer with rpc_finished hears of every call it answers.
    if len(arguments) < 3:
        return None
    return cast(
        "Callable[[str, grpc.StatusCode, float], None] | None",
        getattr(arguments[0], "rpc_finished", None),
    )


def rpc_boundary(handler: _Handler) -> _Handler:
    """Map what ``handler`` raises to gRPC statuses (see the module docstring).

    ``handler`` is a coroutine or async-generator function whose last positional argument is
    the servicer context. A servicer method's ``self`` may define ``rpc_finished(method,
    code, seconds)``: it is told the final status and duration of every unary call.
    """
    method = handler.__name__

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(*arguments: Any) -> AsyncIterator[Any]:
            context = arguments[-1]
            try:
                async for item in handler(*arguments):
                    yield item
            except MeshError as error:
                await abort_with(context, error)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _abort_unexpected(context, method, error)

        return cast("_Handler", stream_wrapper)

    @functools.wraps(handler)
    async def unary_wrapper(*arguments: Any) -> Any:
        context = arguments[-1]
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await handler(*arguments)
        except MeshError as error:
            code = error.status_code
            await abort_with(context, error)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as error:
            code = grpc.StatusCode.INTERNAL
            await _abort_unexpected(context, method, error)
        finally:
            observe = _observer(arguments)
            if observe is not None:
                observe(method, code, time.perf_counter() - started)

    return cast("_Handler", unary_wrapper)


def trailing_value(metadata: MetadataPairs | None, key: str) -> str | None:
    """The value of ``key`` in ``metadata`` (``(key, value)`` pairs), decoded; None if absent."""
    for item_key, value in metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _trailers(error: grpc.aio.AioRpcError) -> MetadataPairs:
    # grpc.aio's Metadata yields (key, value) pairs; the stubs type them loosely.
    return cast("MetadataPairs", tuple(error.trailing_metadata() or ()))


PUSHBACK_METADATA_KEY = "grpc-retry-pushback-ms"
"""gRPC's standard retry hint; read when ``sessionmesh-retry-after-ms`` is absent."""


def retry_after_ms(metadata: MetadataPairs | None) -> int | None:
    """The server's retry hint — ``sessionmesh-retry-after-ms``, else ``grpc-retry-pushback-ms``
    — or None when absent or malformed."""
    for key in (RETRY_AFTER_METADATA_KEY, PUSHBACK_METADATA_KEY):
        text = trailing_value(metadata, key)
        if text is not None and text.isdigit():
            return int(text)
    return None


def owner_address(metadata: MetadataPairs | None) -> str | None:
    """The ``host:port`` part of ``sessionmesh-owner: <node_id>@<host:port>``, if present."""
    text = trailing_value(metadata, OWNER_METADATA_KEY)
    if text is None:
        return None
    _, separator, address = text.partition("@")
    return address if separator and address else None


def from_rpc_error(error: grpc.aio.AioRpcError) -> MeshError:
    """The ``MeshError`` a failed call stands for (``MeshError`` itself for codes without a
    class of their own), with the owner (``NotOwner.owner``) and the retry hint
    (``retry_after_ms``) parsed from its trailers: the one place a client reads them."""
    trailers = _trailers(error)
    message = error.details() or error.code().name
    cls = ERRORS_BY_CODE.get(error.code(), MeshError)
    state = trailing_value(trailers, SESSION_STATE_METADATA_KEY)
    if cls is NotOwner and state is not None:
        return WrongState(message, state=state)
    if cls is NotOwner:
        return NotOwner(message, owner=trailing_value(trailers, OWNER_METADATA_KEY) or "")
    hint_ms = retry_after_ms(trailers) or 0
    if cls is Unavailable:
        return Unavailable(message, retry_after_ms=hint_ms)
    return cls(message, retry_after_ms=hint_ms)
