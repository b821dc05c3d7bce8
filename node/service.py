"""``sessionmesh.v1.SessionService`` on a node: validate, authorize, call the manager.

Every method runs inside :func:`registry.rpc_boundary`, the one place where a ``MeshError``
becomes a gRPC status. Each call is authorized by the serving check before it touches a
session, and the epoch it was authorized under travels with it: a session refuses a call
authorized under another ownership than its own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from node import messages
from node.budget import WorkBudget
from node.catalog import CatalogBook
from node.drivers.base import PAIRING_CODE_VALIDITY_SECONDS
from node.manager import SessionManager
from node.moves import Moves
from node.serving import AcquireFirst, Authorization, ServingCheck
from protos import session_pb2, session_pb2_grpc
from registry import (
    InvalidInput,
    NotFound,
    rpc_boundary,
    validate_free_text,
    validate_id,
    validate_labels,
    validate_phone_number,
    validate_recipient,
    validate_text,
)

DEFAULT_DELETE_REASON = "user_initiated"
MAX_REASON_CHARS = 64

Context = grpc.aio.ServicerContext[Any, Any]


def _session_key(request: Any) -> tuple[str, str]:
    return (
        validate_id(request.workspace_id, field="workspace_id"),
        validate_id(request.session_id, field="session_id"),
    )


def _validate_reason(reason: str, details: str) -> tuple[str, str]:
    reason = reason or DEFAULT_DELETE_REASON
    if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise InvalidInput(f"reason is invalid: at most {MAX_REASON_CHARS} printable characters")
    # Printable excludes NUL and lone surrogates: like details, the reason must fit the DB.
    return reason, validate_free_text(details, field="details")


class SessionService(session_pb2_grpc.SessionServiceServicer):
    """The session API of one node."""

    def __init__(
        self,
        manager: SessionManager,
        *,
        serving: ServingCheck,
        moves: Moves,
        catalog: CatalogBook,
        budget: WorkBudget,
    ) -> None:
        self._manager = manager
        self._budget = budget
        self._serving = serving
        self._moves = moves
        self._catalog = catalog

    def rpc_finished(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None:
        """Record one answered call (told by :func:`registry.rpc_boundary`)."""
        self._manager.metrics.rpc_finished(method, code.name, duration_seconds)

    @asynccontextmanager
    async def serve(self, workspace_id: str) -> AsyncIterator[Authorization]:
        """Authorize a call for ``workspace_id``, then hold a unit of the node's work budget
        while it runs (``Busy`` at once when the budget is spent)."""
        authorization = await self._authorize(workspace_id)
        async with self._budget.call():
            yield authorization

    async def _authorize(self, workspace_id: str) -> Authorization:
        """May this call run here, under which epoch: ``NotOwner`` or ``Unavailable`` if not.

        A slot nobody owns that placement gives this node is acquired first (an empty slot
        has no owner until its first call); a step in progress on the unit (the restore of
        its sessions) is waited for, bounded, so a call never sees a half-restored slot."""
        try:
            authorization = self._serving.check(workspace_id)
        except AcquireFirst as first:
            await self._moves.acquire_on_demand(first.unit)
            authorization = self._serving.check(workspace_id)  # again AcquireFirst: retryable
        if await self._moves.wait_settled(authorization.unit):
            authorization = self._serving.check(workspace_id)
        return authorization

    @rpc_boundary
    async def CreateSession(
        self, request: session_pb2.CreateSessionRequest, context: Context
    ) -> session_pb2.Session:
        """Create a session, or return the one with this session_id."""
        workspace_id, session_id = _session_key(request)
        phone_number = validate_phone_number(request.phone_number)
        labels = validate_labels(dict(request.labels))
        async with self.serve(workspace_id) as authorization:
            view = await self._manager.create(
                workspace_id,
                session_id,
                phone_number=phone_number,
                labels=labels,
                epoch=authorization.epoch,
            )
            await self._catalog.note_sessions(workspace_id)
            self._serving.confirm(authorization)
        return messages.session_message(view)

    @rpc_boundary
    async def GetSession(
        self, request: session_pb2.GetSessionRequest, context: Context
    ) -> session_pb2.Session:
        """Return one session."""
        workspace_id, session_id = _session_key(request)
        async with self.serve(workspace_id):
            view = await self._manager.get(workspace_id, session_id)
        return messages.session_message(view)

    @rpc_boundary
    async def ListSessions(
        self, request: session_pb2.ListSessionsRequest, context: Context
    ) -> session_pb2.ListSessionsResponse:
        """One page of a workspace's sessions."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        async with self.serve(workspace_id):
            views, next_token = self._manager.list_sessions(
                workspace_id, page_size=request.page_size, page_token=request.page_token
            )
        return session_pb2.ListSessionsResponse(
            sessions=[messages.session_message(view) for view in views],
            next_page_token=next_token,
        )

    @rpc_boundary
    async def DeleteSession(
        self, request: session_pb2.DeleteSessionRequest, context: Context
    ) -> session_pb2.Session:
        """Stop, log out and record why (idempotent)."""
        workspace_id, session_id = _session_key(request)
        reason, details = _validate_reason(request.reason, request.details)
        async with self.serve(workspace_id) as authorization:
            view = await self._manager.delete(
                workspace_id,
                session_id,
                reason=reason,
                details=details,
                epoch=authorization.epoch,
            )
            await self._catalog.note_sessions(workspace_id)
            self._serving.confirm(authorization)
        return messages.session_message(view)

    @rpc_boundary
    async def GetQrCode(
        self, request: session_pb2.GetQrCodeRequest, context: Context
    ) -> session_pb2.QrCode:
        """The QR code of a session waiting to be paired."""
        workspace_id, session_id = _session_key(request)
        async with self.serve(workspace_id):
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

    @rpc_boundary
    async def RequestPairingCode(
        self, request: session_pb2.RequestPairingCodeRequest, context: Context
    ) -> session_pb2.PairingCode:
        """A code that pairs a session waiting to be paired by phone number, not a QR scan."""
        workspace_id, session_id = _session_key(request)
        phone_number = validate_phone_number(request.phone_number)
        if not phone_number:
            raise InvalidInput("phone_number is required: the number of the phone to link")
        async with self.serve(workspace_id):
            code = await self._manager.request_pairing_code(workspace_id, session_id, phone_number)
        return session_pb2.PairingCode(
            workspace_id=workspace_id,
            session_id=session_id,
            code=code,
            expire_time=messages.timestamp(time.time() + PAIRING_CODE_VALIDITY_SECONDS),
        )

    @rpc_boundary
    async def SendMessage(
        self, request: session_pb2.SendMessageRequest, context: Context
    ) -> session_pb2.SendMessageResponse:
        """Queue a message in the durable outbox (idempotent on client_message_id)."""
        workspace_id, session_id = _session_key(request)
        client_message_id = validate_id(request.client_message_id, field="client_message_id")
        to = validate_recipient(request.to)
        text = validate_text(request.text)
        async with self.serve(workspace_id) as authorization:
            result = await self._manager.send(
                workspace_id, session_id, client_message_id, to, text, epoch=authorization.epoch
            )
            self._serving.confirm(authorization)  # acknowledged only under a confirmed lease
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

    @rpc_boundary
    async def WatchSession(
        self, request: session_pb2.WatchSessionRequest, context: Context
    ) -> AsyncIterator[session_pb2.SessionEvent]:
        """A snapshot, then live events until the client cancels or the session stops; with
        ``after_sequence``, every event after it (from the durable log), then live ones."""
        workspace_id, session_id = _session_key(request)
        after = request.after_sequence
        async with self.serve(workspace_id):  # the budget covers setting the stream up
            session, subscription = self._manager.watch(workspace_id, session_id)
        try:
            # Subscribed before the snapshot or the backlog, so no event falls between; an
            # event in both is passed once (by its sequence).
            if after:
                missed = await session.events_after(after)
            else:
                missed = []
                after = session.last_sequence
                yield messages.snapshot_event(session.view(), at_unix=time.time(), sequence=after)
            for event in missed:
                yield messages.event_message(workspace_id, session_id, event)
                after = event.sequence
            async for event in subscription.events():
                if event.sequence > after:
                    yield messages.event_message(workspace_id, session_id, event)
        finally:
            session.unsubscribe(subscription)
