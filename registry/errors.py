"""The one error family of sessionmesh, and its mapping to gRPC statuses.

::

    MeshError
    ├── InvalidInput          INVALID_ARGUMENT    bad id, text too long, bad page token
    ├── NotFound              NOT_FOUND           no such session
    ├── AlreadyExists         ALREADY_EXISTS      same session id, different phone number
    ├── CapacityExhausted     RESOURCE_EXHAUSTED  node at MAX_SESSIONS_PER_INSTANCE
    ├── NotOwner              FAILED_PRECONDITION this node does not own the workspace
    │                                             (owner in trailing metadata)
    ├── WrongState            FAILED_PRECONDITION the session's state does not allow the call
    │                                             (the state in trailing metadata)
    ├── Unavailable           UNAVAILABLE         no node alive, or a handoff in progress
    │                                             (retry hint in trailing metadata)
    ├── Unauthenticated       UNAUTHENTICATED     no token, or one the mesh does not know
    ├── PermissionDenied      PERMISSION_DENIED   a token of another workspace, or without
    │                                             the scope (or admin role) the call needs
    ├── OutOfRange            OUT_OF_RANGE        a watch resumed after events no longer kept
    └── Quarantined           DATA_LOSS           the session's stored files cannot be read
                                                  (listed by ``meshctl quarantine``)

Servers turn a ``MeshError`` into a status at one boundary, and clients turn a status back in
one place: both in :mod:`registry.status`.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

OWNER_METADATA_KEY = "sessionmesh-owner"
"""Trailing metadata: the node id (and address, ``id@host:port``) that owns the workspace."""

RETRY_AFTER_METADATA_KEY = "sessionmesh-retry-after-ms"
"""Trailing metadata: how long to wait before retrying (``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``)."""

SESSION_STATE_METADATA_KEY = "sessionmesh-session-state"
"""Trailing metadata of a ``WrongState``: the session's state (``ready``…). It tells this
``FAILED_PRECONDITION`` apart from ``NotOwner``'s, which routers follow to another node."""


class MeshError(Exception):
    """Root of every error sessionmesh raises on purpose."""

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        retry_after_ms: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms
        """How long the server asks the caller to wait before retrying (0: no hint)."""
        if retry_after_ms:
            metadata = (*metadata, (RETRY_AFTER_METADATA_KEY, str(retry_after_ms)))
        self.metadata = metadata
        """Trailing metadata the status carries (owner, retry hint)."""


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


class WrongState(MeshError):
    """The session exists but its state does not allow the call (a pairing code for a session
    that is paired already); retrying it unchanged fails again, on any node."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message, metadata=((SESSION_STATE_METADATA_KEY, state),))
        self.state = state


class Unavailable(MeshError):
    """Nothing can serve the call right now; retry after ``retry_after_ms``."""

    status_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, retry_after_ms: int = 0) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)


class Unauthenticated(MeshError):
    """The call carries no bearer token, or one that is unknown, revoked or expired."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MeshError):
    """The caller's token is valid but does not grant this call."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class OutOfRange(MeshError):
    """What was asked for lies outside what is kept (events compacted out of the log)."""

    status_code = grpc.StatusCode.OUT_OF_RANGE


class Quarantined(MeshError):
    """The session's stored files cannot be read; it is set aside until they are repaired."""

    status_code = grpc.StatusCode.DATA_LOSS


ERRORS_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    cls.status_code: cls
    for cls in (
        InvalidInput,
        NotFound,
        AlreadyExists,
        CapacityExhausted,
        NotOwner,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        OutOfRange,
        Quarantined,
    )
}
"""The class of each status code that has one (the way back from a status to an error;
``FAILED_PRECONDITION`` is ``WrongState`` instead when it carries the session's state)."""
