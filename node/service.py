"""``sessionmesh.v1.SessionService`` on a node: validate, authorize by ownership, call the manager.

Every method runs through one of two decorators, the single place where a ``MeshError``
becomes a gRPC status (``registry.errors.abort_with``) and anything unexpected becomes
INTERNAL with a generic message (the details go to the log, not to the caller).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from node import messages
from node.manager import SessionManager
from node.ownership import NodeOwnership
from protos import session_pb2, session_pb2_grpc
from registry.errors import InvalidInput, MeshError, NotFound, abort_with
from registry.ids import (
    validate_id,
    validate_labels,
    validate_phone_number,
    validate_recipient,
    validate_text,
)

_log = logging.getLogger(__name__)

DEFAULT_DELETE_REASON = "user_initiated"
MAX_REASON_CHARS = 64
MAX_DETAILS_CHARS = 4096

Context = grpc.aio.ServicerContext[Any, Any]
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Service = TypeVar("_Service", bound="SessionService")


async def _abort_unexpected(context: Context, method: str, error: Exception) -> None:
    _log.exception("rpc_failed method=%s error=%r", method, error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def unary_errors(
    handler: Callable[[_Service, _Request, Context], Awaitable[_Response]],
) -> Callable[[_Service, _Request, Context], Awaitable[_Response]]:
    """Map errors of a unary method to statuses, and time the call."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: _Service, request: _Request, context: Context) -> _Response:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await handler(self, request, context)
        except MeshError as error:
            code = error.status_code
            await abort_with(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            code = grpc.StatusCode.INTERNAL
            await _abort_unexpected(context, method, error)
            raise  # abort raised already; keeps the type checker sure we never fall through
        finally:
            self.metrics_rpc(method, code, time.perf_counter() - started)

    return wrapper


def stream_errors(
    handler: Callable[[_Service, _Request, Context], AsyncIterator[_Response]],
) -> Callable[[_Service, _Request, Context], AsyncIterator[_Response]]:
    """Map errors of a server-streaming method to statuses."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(
        self: _Service, request: _Request, context: Context
    ) -> AsyncIterator[_Response]:
        try:
            async for item in handler(self, request, context):
                yield item
        except MeshError as error:
            await abort_with(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_unexpected(context, method, error)

    return wrapper


def _session_key(request: Any) -> tuple[str, str]:
    return (
        validate_id(request.workspace_id, field="workspace_id"),
        validate_id(request.session_id, field="session_id"),
    )


def _validate_reason(reason: str, details: str) -> tuple[str, str]:
    reason = reason or DEFAULT_DELETE_REASON
    if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise InvalidInput(f"reason is invalid: at most {MAX_REASON_CHARS} printable characters")
    if len(details) > MAX_DETAILS_CHARS:
        raise InvalidInput(
            f"details has {len(details)} characters; the limit is {MAX_DETAILS_CHARS}"
        )
    return reason, details


class SessionService(session_pb2_grpc.SessionServiceServicer):
    """The session API of one node."""

    def __init__(self, manager: SessionManager, *, ownership: NodeOwnership | None = None) -> None:
        self._manager = manager
        self._ownership = ownership

    def metrics_rpc(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None:
        """Record one answered call."""
        self._manager.metrics.rpc_finished(method, code.name, duration_seconds)

    async def _authorize(self, workspace_id: str) -> int:
        """The owner epoch this node serves ``workspace_id`` under (see
        ``NodeOwnership.authorize``: ``NotOwner`` or ``Unavailable`` otherwise).

        Without ownership (a bare manager) every workspace is served under epoch 0."""
        if self._ownership is None:
            return 0
        return await self._ownership.authorize(workspace_id)

    async def _note_sessions(self, workspace_id: str) -> None:
        if self._ownership is not None:
            await self._ownership.note_sessions(workspace_id)

    @unary_errors
    async def CreateSession(
        self, request: session_pb2.CreateSessionRequest, context: Context
    ) -> session_pb2.Session:
        """Create a session, or return the one with this session_id."""
        workspace_id, session_id = _session_key(request)
        phone_number = validate_phone_number(request.phone_number)
        labels = validate_labels(dict(request.labels))
        epoch = await self._authorize(workspace_id)
        view = await self._manager.create(
            workspace_id, session_id, phone_number=phone_number, labels=labels, epoch=epoch
        )
        await self._note_sessions(workspace_id)
        return messages.session_message(view)

    @unary_errors
    async def GetSession(
        self, request: session_pb2.GetSessionRequest, context: Context
    ) -> session_pb2.Session:
        """Return one session."""
        workspace_id, session_id = _session_key(request)
        await self._authorize(workspace_id)
        return messages.session_message(await self._manager.get(workspace_id, session_id))

    @unary_errors
    async def ListSessions(
        self, request: session_pb2.ListSessionsRequest, context: Context
    ) -> session_pb2.ListSessionsResponse:
        """One page of a workspace's sessions."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        await self._authorize(workspace_id)
        views, next_token = self._manager.list_sessions(
            workspace_id, page_size=request.page_size, page_token=request.page_token
        )
        return session_pb2.ListSessionsResponse(
            sessions=[messages.session_message(view) for view in views],
            next_page_token=next_token,
        )

    @unary_errors
    async def DeleteSession(
        self, request: session_pb2.DeleteSessionRequest, context: Context
    ) -> session_pb2.Session:
        """Stop, log out and record why (idempotent)."""
        workspace_id, session_id = _session_key(request)
        reason, details = _validate_reason(request.reason, request.details)
        await self._authorize(workspace_id)
        view = await self._manager.delete(workspace_id, session_id, reason=reason, details=details)
        await self._note_sessions(workspace_id)
        return messages.session_message(view)

    @unary_errors
    async def GetQrCode(
        self, request: session_pb2.GetQrCodeRequest, context: Context
    ) -> session_pb2.QrCode:
        """The QR code of a session waiting to be paired."""
        workspace_id, session_id = _session_key(request)
        await self._authorize(workspace_id)
        view = self._manager.qr_code(workspace_id, session_id)
        if not view.qr_code:
            raise NotFound(
                f"session {workspace_id}/{session_id} has no QR code: it is {view.meta.state}"
            )
        return session_pb2.QrCode(
            workspace_id=workspace_id,
            session_id=session_id,
            code=view.qr_code,
            expire_time=messages.timestamp(view.qr_expire_at_unix),
        )

    @unary_errors
    async def SendMessage(
        self, request: session_pb2.SendMessageRequest, context: Context
    ) -> session_pb2.SendMessageResponse:
        """Queue a message in the durable outbox (idempotent on client_message_id)."""
        workspace_id, session_id = _session_key(request)
        client_message_id = validate_id(request.client_message_id, field="client_message_id")
        to = validate_recipient(request.to)
        text = validate_text(request.text)
        await self._authorize(workspace_id)
        result = await self._manager.send(workspace_id, session_id, client_message_id, to, text)
        entry = result.entry
        return session_pb2.SendMessageResponse(
            workspace_id=workspace_id,
            session_id=session_id,
            client_message_id=client_message_id,
            # The first answer, replayed for a duplicate: it said QUEUED.
            status=session_pb2.MESSAGE_STATUS_QUEUED,
            node_id=entry.accepted_by_node_id or self._manager.node_id,
            accept_time=messages.timestamp(entry.accepted_at_unix),
            duplicate=result.is_duplicate,
        )

    @stream_errors
    async def WatchSession(
        self, request: session_pb2.WatchSessionRequest, context: Context
    ) -> AsyncIterator[session_pb2.SessionEvent]:
        """A snapshot, then live events until the client cancels or the session stops."""
        workspace_id, session_id = _session_key(request)
        await self._authorize(workspace_id)
        session, subscription = self._manager.watch(workspace_id, session_id)
        try:
            # Subscribed before the snapshot, so no event falls between the two.
            yield messages.snapshot_event(session.view(), at_unix=time.time())
            async for event in subscription.events():
                yield messages.event_message(workspace_id, session_id, event)
        finally:
            session.unsubscribe(subscription)
