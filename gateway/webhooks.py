"""``sessionmesh.v1.WebhookAdminService``: the mesh-wide default webhook, for workspaces
without their own (the checklist's one-backend case); admin tokens only. The workspaces' own
webhooks are ``WebhookService``, forwarded to the owning node like ``SessionService``."""

from __future__ import annotations

from typing import Any

import aetcd
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from protos import webhook_pb2, webhook_pb2_grpc
from registry import ClusterKeys, NotFound, rpc_boundary
from registry.webhooks import (
    WebhookRecord,
    delete_webhook,
    new_checked_record,
    put_webhook,
    read_webhook,
)

Context = grpc.aio.ServicerContext[Any, Any]

_DEFAULT = ""
"""The workspace id the default webhook is stored under."""


def _timestamp(unix_seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(unix_seconds * 1e9))
    return stamp


def default_webhook_message(record: WebhookRecord, *, secret: str = "") -> webhook_pb2.Webhook:
    """The API's form of the default webhook (its secret only when ``secret`` is given)."""
    message = webhook_pb2.Webhook(
        id=record.webhook_id,
        url=record.url,
        event_types=list(record.event_types),
        create_time=_timestamp(record.created_at_unix),
        secret=secret,
    )
    previous = record.previous_secret_expires_at_unix
    if previous is not None:
        message.previous_secret_expire_time.CopyFrom(_timestamp(previous))
    return message


class WebhookAdminServicer(webhook_pb2_grpc.WebhookAdminServiceServicer):
    """Sets, shows and removes the default webhook in etcd; every node follows it."""

    def __init__(self, *, etcd: aetcd.Client, keys: ClusterKeys, allow_private: bool) -> None:
        self._etcd = etcd
        self._keys = keys
        self._allow_private = allow_private

    @rpc_boundary
    async def SetDefaultWebhook(
        self, request: webhook_pb2.SetDefaultWebhookRequest, context: Context
    ) -> webhook_pb2.SetDefaultWebhookResponse:
        """Set the default webhook (a new id, and a new secret unless one is given)."""
        record, secret = await new_checked_record(
            workspace_id=_DEFAULT,
            url=request.url,
            event_types=list(request.event_types),
            secret=request.secret,
            allow_private=self._allow_private,
        )
        await put_webhook(self._etcd, self._keys, record)
        return webhook_pb2.SetDefaultWebhookResponse(
            webhook=default_webhook_message(record, secret=secret)
        )

    @rpc_boundary
    async def GetDefaultWebhook(
        self, request: webhook_pb2.GetDefaultWebhookRequest, context: Context
    ) -> webhook_pb2.GetDefaultWebhookResponse:
        """The default webhook, without its secret."""
        record = await read_webhook(self._etcd, self._keys, _DEFAULT)
        if record is None:
            raise NotFound("no default webhook is set: meshctl webhook set-default URL")
        return webhook_pb2.GetDefaultWebhookResponse(webhook=default_webhook_message(record))

    @rpc_boundary
    async def DeleteDefaultWebhook(
        self, request: webhook_pb2.DeleteDefaultWebhookRequest, context: Context
    ) -> webhook_pb2.DeleteDefaultWebhookResponse:
        """Remove the default webhook."""
        record = await delete_webhook(self._etcd, self._keys, _DEFAULT)
        return webhook_pb2.DeleteDefaultWebhookResponse(webhook=default_webhook_message(record))
