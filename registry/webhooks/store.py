"""Webhook records in etcd (``webhooks/<workspace>`` and ``webhooks-default``): write, read,
delete and rotate them, and :class:`WebhookDirectory`, the watch-fed copy every node delivers
from (no etcd read per event).
"""

from __future__ import annotations

import time
from typing import Any

import aetcd
import structlog

from registry.errors import NotFound, Unavailable
from registry.etcd import etcd_errors
from registry.keys import ClusterKeys
from registry.mirror import WatchMirror
from registry.webhooks.records import WebhookRecord

_log = structlog.get_logger(__name__)

ROTATE_ATTEMPTS = 5
"""Compare-and-swap tries of a rotation that races with another change of the record."""


def _key(keys: ClusterKeys, workspace_id: str) -> bytes:
    return keys.webhook(workspace_id) if workspace_id else keys.default_webhook


def _what(workspace_id: str) -> str:
    return f"the webhook of {workspace_id}" if workspace_id else "the default webhook"


def _parse(key: bytes, value: bytes) -> WebhookRecord | None:
    try:
        return WebhookRecord.from_json(value)
    except (ValueError, TypeError, KeyError) as error:
        _log.warning("webhook_record_invalid", key=key, error=repr(error))
        return None


async def put_webhook(client: aetcd.Client, keys: ClusterKeys, record: WebhookRecord) -> None:
    """Store ``record`` (replacing the workspace's webhook, or the default)."""
    with etcd_errors(f"store {_what(record.workspace_id)}"):
        await client.put(_key(keys, record.workspace_id), record.to_json())


async def read_webhook(
    client: aetcd.Client, keys: ClusterKeys, workspace_id: str
) -> WebhookRecord | None:
    """The workspace's own webhook (``""``: the default), or None."""
    with etcd_errors(f"read {_what(workspace_id)}"):
        found = await client.get(_key(keys, workspace_id))
    if found is None:
        return None
    return _parse(_key(keys, workspace_id), found.value)


async def delete_webhook(
    client: aetcd.Client, keys: ClusterKeys, workspace_id: str
) -> WebhookRecord:
    """Delete the workspace's webhook (``""``: the default); what it was. ``NotFound`` if
    there was none."""
    key = _key(keys, workspace_id)
    with etcd_errors(f"delete {_what(workspace_id)}"):
        succeeded, responses = await client.transaction(
            compare=[client.transactions.create(key) != 0],
            success=[client.transactions.get(key), client.transactions.delete(key)],
            failure=[],
        )
    found = responses[0] if succeeded and responses else []
    record = _parse(key, found[0][1].value) if found else None
    if record is None:
        raise NotFound(f"{_what(workspace_id)} is not set")
    return record


async def rotate_secret(
    client: aetcd.Client,
    keys: ClusterKeys,
    workspace_id: str,
    *,
    secret: str,
    overlap_seconds: float,
) -> WebhookRecord:
    """Make ``secret`` current, the current one signing for ``overlap_seconds`` more; the
    record as stored. ``NotFound`` without a webhook."""
    key = _key(keys, workspace_id)
    for _ in range(ROTATE_ATTEMPTS):
        with etcd_errors(f"read {_what(workspace_id)}"):
            found = await client.get(key)
        record = None if found is None else _parse(key, found.value)
        if found is None or record is None:
            raise NotFound(f"{_what(workspace_id)} is not set")
        rotated = record.rotated(secret, overlap_seconds=overlap_seconds, now_unix=time.time())
        with etcd_errors(f"rotate the secret of {_what(workspace_id)}"):
            succeeded, _ = await client.transaction(
                compare=[client.transactions.mod(key) == found.mod_revision],
                success=[client.transactions.put(key, rotated.to_json())],
                failure=[],
            )
        if succeeded:
            return rotated
    raise Unavailable(f"{_what(workspace_id)} kept changing: rotate again", retry_after_ms=100)


class WebhookDirectory(WatchMirror[dict[str, WebhookRecord]]):
    """Every webhook record by workspace (``""``: the default), kept in step with etcd."""

    def __init__(self, client: aetcd.Client, keys: ClusterKeys) -> None:
        super().__init__(client, watch_prefix=keys.webhook_records_prefix, name="webhooks")
        self._keys = keys
        self._records: dict[str, WebhookRecord] = {}

    def own(self, workspace_id: str) -> WebhookRecord | None:
        """The workspace's own webhook, as last seen."""
        return self._records.get(workspace_id) if workspace_id else None

    def for_workspace(self, workspace_id: str) -> WebhookRecord | None:
        """Where the workspace's events go: its own webhook, else the default, else None."""
        return self._records.get(workspace_id) or self._records.get("")

    def snapshot(self) -> dict[str, WebhookRecord]:
        """The records by workspace (a copy)."""
        return dict(self._records)

    def _accepts(self, key: bytes, record: WebhookRecord | None) -> str | None:
        workspace_id = self._keys.webhook_workspace_of(key)
        if workspace_id is None or record is None or record.workspace_id != workspace_id:
            return None
        return workspace_id

    async def _reload(self) -> tuple[int, bool]:
        response = await self._client.get_prefix(self._keys.webhook_records_prefix)
        records: dict[str, WebhookRecord] = {}
        for item in response:
            record = _parse(item.key, item.value)
            workspace_id = self._accepts(item.key, record)
            if workspace_id is not None and record is not None:
                records[workspace_id] = record
        is_changed = records != self._records
        self._records = records
        return int(response.header.revision), is_changed

    def _apply(self, event: Any) -> bool:
        workspace_id = self._keys.webhook_workspace_of(event.kv.key)
        if workspace_id is None:
            return False
        if event.kind == aetcd.EventKind.PUT:
            record = _parse(event.kv.key, event.kv.value)
            if self._accepts(event.kv.key, record) is not None and record is not None:
                self._records[workspace_id] = record
                return True
        return self._records.pop(workspace_id, None) is not None
