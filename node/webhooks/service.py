"""``sessionmesh.v1.WebhookService`` on a node: routed here by ``workspace_id`` like
``SessionService``, authorized the same way (the node must serve the workspace), the
``webhooks.manage`` scope checked by the node's access interceptor."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aetcd
import grpc

from node.messages import timestamp
from node.webhooks.dead_letters import DeadLetter
from node.webhooks.hub import WebhookHub
from protos import webhook_pb2, webhook_pb2_grpc
from registry import ClusterKeys, InvalidInput, NotFound, rpc_boundary, validate_id
from registry.webhooks import (
    DEFAULT_OVERLAP_SECONDS,
    MAX_OVERLAP_SECONDS,
    WebhookRecord,
    delete_webhook,
    new_checked_record,
    new_secret,
    put_webhook,
    read_webhook,
    rotate_secret,
    validate_secret,
)

Context = grpc.aio.ServicerContext[Any, Any]


def webhook_message(record: WebhookRecord, *, secret: str = "") -> webhook_pb2.Webhook:
    """The API's form of ``record`` (its secrets only when ``secret`` is given)."""
    message = webhook_pb2.Webhook(
        workspace_id=record.workspace_id,
        id=record.webhook_id,
        url=record.url,
        event_types=list(record.event_types),
        create_time=timestamp(record.created_at_unix),
        secret=secret,
    )
    previous = record.previous_secret_expires_at_unix
    expire_time = None if previous is None else timestamp(previous)
    if expire_time is not None:
        message.previous_secret_expire_time.CopyFrom(expire_time)
    return message


def dead_letter_message(letter: DeadLetter) -> webhook_pb2.DeadLetter:
    """The API's form of a dead letter."""
    return webhook_pb2.DeadLetter(
        event_id=letter.event_id,
        session_id=letter.session_id,
        sequence=letter.sequence,
        type=letter.event_type,
        event_time=timestamp(letter.event_at_unix),
        dead_time=timestamp(letter.dead_at_unix),
        attempts=letter.attempts,
        last_error=letter.last_error,
        body=letter.body,
    )


def overlap_of(seconds: int) -> float:
    """A rotation's overlap: ``seconds``, or the default for 0; ``InvalidInput`` past a week."""
    if seconds > MAX_OVERLAP_SECONDS:
        raise InvalidInput(f"overlap_seconds is at most {MAX_OVERLAP_SECONDS} (a week)")
    return float(seconds or DEFAULT_OVERLAP_SECONDS)


class WebhookService(webhook_pb2_grpc.WebhookServiceServicer):
    """The webhook API of one node."""

    def __init__(
        self,
        *,
        hub: WebhookHub,
        etcd: aetcd.Client,
        keys: ClusterKeys,
        serve: Callable[[str], AbstractAsyncContextManager[object]],
        allow_private: bool,
        may_write: Callable[[], bool],
        rpc_finished: Callable[[str, grpc.StatusCode, float], None] | None = None,
    ) -> None:
        self._hub = hub
        self._etcd = etcd
        self._keys = keys
        self._serve = serve
        self._allow_private = allow_private
        self._may_write = may_write
        self._rpc_finished = rpc_finished

    def rpc_finished(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None:
        """Record one answered call (told by :func:`registry.rpc_boundary`)."""
        if self._rpc_finished is not None:
            self._rpc_finished(method, code, duration_seconds)

    async def _own(self, workspace_id: str) -> WebhookRecord:
        record = await read_webhook(self._etcd, self._keys, workspace_id)
        if record is None:
            raise NotFound(f"workspace {workspace_id} has no webhook of its own")
        return record

    @rpc_boundary
    async def SetWebhook(
        self, request: webhook_pb2.SetWebhookRequest, context: Context
    ) -> webhook_pb2.SetWebhookResponse:
        """Set the workspace's webhook (a new id and, unless given, a new secret)."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        record, secret = await new_checked_record(
            workspace_id=workspace_id,
            url=request.url,
            event_types=list(request.event_types),
            secret=request.secret,
            allow_private=self._allow_private,
        )
        async with self._serve(workspace_id):
            await put_webhook(self._etcd, self._keys, record)
        return webhook_pb2.SetWebhookResponse(webhook=webhook_message(record, secret=secret))

    @rpc_boundary
    async def GetWebhook(
        self, request: webhook_pb2.GetWebhookRequest, context: Context
    ) -> webhook_pb2.GetWebhookResponse:
        """The workspace's own webhook, without its secret."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        async with self._serve(workspace_id):
            record = await self._own(workspace_id)
        return webhook_pb2.GetWebhookResponse(webhook=webhook_message(record))

    @rpc_boundary
    async def DeleteWebhook(
        self, request: webhook_pb2.DeleteWebhookRequest, context: Context
    ) -> webhook_pb2.DeleteWebhookResponse:
        """Remove the workspace's webhook."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        async with self._serve(workspace_id):
            record = await delete_webhook(self._etcd, self._keys, workspace_id)
        return webhook_pb2.DeleteWebhookResponse(webhook=webhook_message(record))

    @rpc_boundary
    async def RotateWebhookSecret(
        self, request: webhook_pb2.RotateWebhookSecretRequest, context: Context
    ) -> webhook_pb2.RotateWebhookSecretResponse:
        """A new secret; the previous one signs too for the overlap."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        overlap = overlap_of(request.overlap_seconds)
        secret = validate_secret(request.secret) if request.secret else new_secret()
        async with self._serve(workspace_id):
            record = await rotate_secret(
                self._etcd, self._keys, workspace_id, secret=secret, overlap_seconds=overlap
            )
        return webhook_pb2.RotateWebhookSecretResponse(
            webhook=webhook_message(record, secret=secret)
        )

    @rpc_boundary
    async def ListDeadLetters(
        self, request: webhook_pb2.ListDeadLettersRequest, context: Context
    ) -> webhook_pb2.ListDeadLettersResponse:
        """One page of the workspace's dead letters."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        async with self._serve(workspace_id):
            letters, next_token = await self._hub.dead_letters(
                workspace_id, page_size=request.page_size, page_token=request.page_token
            )
        return webhook_pb2.ListDeadLettersResponse(
            dead_letters=[dead_letter_message(each) for each in letters],
            next_page_token=next_token,
        )

    @rpc_boundary
    async def ReplayDeadLetters(
        self, request: webhook_pb2.ReplayDeadLettersRequest, context: Context
    ) -> webhook_pb2.ReplayDeadLettersResponse:
        """Deliver dead letters again."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        event_ids = [validate_id(each, field="event_ids") for each in request.event_ids]
        async with self._serve(workspace_id):
            count = await self._hub.replay(
                workspace_id,
                event_ids=event_ids,
                replay_all=request.all,
                may_write=self._may_write,
            )
        return webhook_pb2.ReplayDeadLettersResponse(replayed=count)

    @rpc_boundary
    async def SendTestEvent(
        self, request: webhook_pb2.SendTestEventRequest, context: Context
    ) -> webhook_pb2.SendTestEventResponse:
        """Post one test event now and report the answer."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        async with self._serve(workspace_id):
            test_id, url, result = await self._hub.send_test(workspace_id)
        return webhook_pb2.SendTestEventResponse(
            event_id=test_id,
            http_status=result.status,
            error="" if result.status and 200 <= result.status < 300 else result.summary,
            url=url,
        )
