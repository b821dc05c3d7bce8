"""The one error family of sessionmesh, and its mapping to gRPC statuses.

::

    MeshError
    ├── InvalidInput          INVALID_ARGUMENT    bad id, text too long, bad page token
    ├── NotFound              NOT_FOUND           no such session
    ├── AlreadyExists         ALREADY_EXISTS      same session id, different phone number
    ├── CapacityExhausted     RESOURCE_EXHAUSTED  node at MAX_SESSIONS_PER_INSTANCE
    ├── NotOwner              FAILED_PRECONDITION this node does not own the workspace
    │                                             (owner in trailing metadata)
    └── Unavailable           UNAVAILABLE         no node alive, or a handoff in progress
                                                  (retry hint in trailing metadata)

Servers turn a ``MeshError`` into a status in one place (:func:`abort_with`);
clients turn a status back in one place (:func:`from_rpc_error`).
"""

from __future__ import annotations

from typing import ClassVar, NoReturn, cast

import grpc

OWNER_METADATA_KEY = "sessionmesh-owner"
"""Trailing metadata: the node id (and address, ``id@host:port``) that owns the workspace."""

RETRY_AFTER_METADATA_KEY = "sessionmesh-retry-after-ms"
"""Trailing metadata: how long to wait before retrying an ``UNAVAILABLE`` call."""


class MeshError(Exception):
    """Root of every error sessionmesh raises on purpose."""

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


class InvalidInput(MeshError):
    """The request is malformed; retrying it unchanged fails again."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MeshError):
    """The session (or node) does not exist."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MeshError):
    """The id is taken by something that differs from the request."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class CapacityExhausted(MeshError):
    """The node hosts as many sessions as it may."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotOwner(MeshError):
    """This node does not own the workspace; the owner is in the metadata if known."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, owner: str = "") -> None:
        metadata = ((OWNER_METADATA_KEY, owner),) if owner else ()
        super().__init__(message, metadata=metadata)
        self.owner = owner


class Unavailable(MeshError):
    """Nothing can serve the call right now; retry after ``retry_after_ms``."""

    status_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, retry_after_ms: int = 0) -> None:
        metadata = ((RETRY_AFTER_METADATA_KEY, str(retry_after_ms)),) if retry_after_ms else ()
        super().__init__(message, metadata=metadata)
        self.retry_after_ms = retry_after_ms


_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    cls.status_code: cls
    for cls in (InvalidInput, NotFound, AlreadyExists, CapacityExhausted, NotOwner, Unavailable)
}


async def abort_with(
    context: grpc.aio.ServicerContext[object, object], error: MeshError
) -> NoReturn:
    """End the RPC with the status, message and trailing metadata of ``error``."""
    if error.metadata:
        context.set_trailing_metadata(error.metadata)
    await context.abort(error.status_code, error.message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def _trailing(error: grpc.aio.AioRpcError, key: str) -> str:
    # grpc.aio's Metadata yields (key, value) pairs; the stubs type them loosely.
    for item in error.trailing_metadata() or ():
        item_key, value = cast("tuple[str, str | bytes]", item)
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return ""


def from_rpc_error(error: grpc.aio.AioRpcError) -> MeshError:
    """The ``MeshError`` a failed call stands for (``MeshError`` itself for other codes)."""
    message = error.details() or error.code().name
    cls = _BY_CODE.get(error.code(), MeshError)
    if cls is NotOwner:
        return NotOwner(message, owner=_trailing(error, OWNER_METADATA_KEY))
    if cls is Unavailable:
        hint = _trailing(error, RETRY_AFTER_METADATA_KEY)
        return Unavailable(message, retry_after_ms=int(hint) if hint.isdigit() else 0)
    return cls(message)
