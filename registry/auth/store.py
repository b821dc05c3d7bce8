"""Bearer tokens in etcd: write, revoke and list them, and :class:`TokenCache`, the watch-fed
copy every gateway and node checks calls against (no etcd read per call).

A revocation deletes the record; each process's watch hears of it within milliseconds, so a
revoked token stops working everywhere well within the second the security issue allows. While
a process's watch is broken (etcd unreachable) its copy stays as it was last seen.
"""

from __future__ import annotations

from typing import Any

import aetcd
import structlog

from registry.auth.tokens import TokenRecord
from registry.etcd import etcd_errors
from registry.keys import ClusterKeys
from registry.mirror import WatchMirror

_log = structlog.get_logger(__name__)


async def store_token(client: aetcd.Client, keys: ClusterKeys, record: TokenRecord) -> None:
    """Write a new token's record."""
    with etcd_errors(f"store token {record.token_id}"):
        await client.put(keys.token(record.token_id), record.to_json())


async def store_token_if_absent(
    client: aetcd.Client, keys: ClusterKeys, record: TokenRecord
) -> bool:
    """Write ``record`` unless its id is stored already; whether it was written (a bootstrap
    admin token written by every process that is given its file: the first one wins)."""
    key = keys.token(record.token_id)
    with etcd_errors(f"store token {record.token_id}"):
        succeeded, _ = await client.transaction(
            compare=[client.transactions.create(key) == 0],
            success=[client.transactions.put(key, record.to_json())],
            failure=[],
        )
    return bool(succeeded)


async def revoke_token(
    client: aetcd.Client, keys: ClusterKeys, token_id: str
) -> TokenRecord | None:
    """Delete a token's record; what it was, or None if there was none."""
    key = keys.token(token_id)
    with etcd_errors(f"revoke token {token_id}"):
        succeeded, responses = await client.transaction(
            compare=[client.transactions.create(key) != 0],
            success=[client.transactions.get(key), client.transactions.delete(key)],
            failure=[],
        )
    if not succeeded:
        return None
    found = responses[0] if responses else []
    if not found:
        return None
    _, stored = found[0]
    return _parse(key, stored.value)


async def read_tokens(client: aetcd.Client, keys: ClusterKeys) -> list[TokenRecord]:
    """Every stored token's record, by id (unreadable records are skipped and logged)."""
    with etcd_errors("read the tokens"):
        response = await client.get_prefix(keys.tokens_prefix)
    records = (_parse(item.key, item.value) for item in response)
    return sorted((each for each in records if each is not None), key=lambda r: r.token_id)


def _parse(key: bytes, value: bytes) -> TokenRecord | None:
    try:
        return TokenRecord.from_json(value)
    except (ValueError, TypeError) as error:
        _log.warning("token_record_invalid", key=key, error=error)
        return None


class TokenCache(WatchMirror[dict[str, TokenRecord]]):
    """The stored tokens by id, kept in step with etcd by a watch."""

    def __init__(self, client: aetcd.Client, keys: ClusterKeys) -> None:
        super().__init__(client, watch_prefix=keys.tokens_prefix, name="tokens")
        self._keys = keys
        self._tokens: dict[str, TokenRecord] = {}

    def get(self, token_id: str) -> TokenRecord | None:
        """The record of ``token_id`` as last seen, or None."""
        return self._tokens.get(token_id)

    def snapshot(self) -> dict[str, TokenRecord]:
        """The records by id (a copy)."""
        return dict(self._tokens)

    async def _reload(self) -> tuple[int, bool]:
        response = await self._client.get_prefix(self._keys.tokens_prefix)
        tokens: dict[str, TokenRecord] = {}
        for item in response:
            record = _parse(item.key, item.value)
            if record is not None and record.token_id == self._keys.token_id_of(item.key):
                tokens[record.token_id] = record
        is_changed = tokens != self._tokens
        self._tokens = tokens
        return int(response.header.revision), is_changed

    def _apply(self, event: Any) -> bool:
        token_id = self._keys.token_id_of(event.kv.key)
        if event.kind == aetcd.EventKind.PUT:
            record = _parse(event.kv.key, event.kv.value)
            if record is None or record.token_id != token_id:
                return self._tokens.pop(token_id, None) is not None
            self._tokens[token_id] = record
            return True
        return self._tokens.pop(token_id, None) is not None
