"""The cluster's operator state in etcd, as a backup holds it: pins, the catalog, tokens,
webhooks (each workspace's and the default) and quarantined sessions — never leases, owners or
live membership, which belong to running processes and are made again when nodes start.

A restore of the whole archive replaces that state; a restore of some workspaces replaces only
their keys (their pin, catalog entries, webhook and quarantine records) and leaves tokens as
they are: a workspace's rollback must not revive a token revoked since the backup."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable

import aetcd

from registry import ClusterKeys, InvalidInput, Unavailable

_PER_TRANSACTION = 64
"""Operations of one etcd transaction (etcd's default limit is 128)."""


def _kept_prefixes(keys: ClusterKeys) -> list[bytes]:
    return [
        keys.pins_prefix,
        keys.catalog_root,
        keys.tokens_prefix,
        keys.webhooks_prefix,
        keys.default_webhook,
        keys.quarantine_prefix,
    ]


def workspace_of(keys: ClusterKeys, relative: str) -> str | None:
    """The workspace an operator key (relative to the cluster root) concerns; None for the
    mesh-wide ones (tokens, the default webhook)."""
    parts = relative.split("/")
    kind = parts[0]
    if kind in ("pins", "webhooks") and len(parts) == 2:
        return parts[1]
    if kind in ("catalog", "quarantine") and len(parts) == 3:
        return parts[2] if kind == "catalog" else parts[1]
    return None


async def export_state(client: aetcd.Client, keys: ClusterKeys) -> list[dict[str, str]]:
    """Every operator key of the cluster: ``{"key": relative, "value": base64}``."""
    exported: list[dict[str, str]] = []
    try:
        for prefix in _kept_prefixes(keys):
            response = await client.get_prefix(prefix)
            for item in response:
                exported.append(
                    {
                        "key": item.key[len(keys.root) :].decode(),
                        "value": base64.b64encode(item.value).decode("ascii"),
                    }
                )
    except aetcd.ClientError as error:
        raise Unavailable(f"cannot read the cluster's state from etcd: {error}") from error
    exported.sort(key=lambda record: record["key"])
    return exported


def parse_state(data: bytes) -> list[dict[str, str]]:
    """The records of an archive's ``etcd.json``; ``InvalidInput`` if it is not one."""
    try:
        records = json.loads(data)
        if not isinstance(records, list) or not all(
            isinstance(r, dict)
            and isinstance(r.get("key"), str)
            and isinstance(r.get("value"), str)
            for r in records
        ):
            raise ValueError("not a list of key/value records")
        for record in records:
            base64.b64decode(record["value"], validate=True)
    except ValueError as error:
        raise InvalidInput(f"the archive's operator state is damaged: {error}") from None
    return records


async def _in_batches(client: aetcd.Client, operations: list[object]) -> None:
    for start in range(0, len(operations), _PER_TRANSACTION):
        batch = operations[start : start + _PER_TRANSACTION]
        await client.transaction(compare=[], success=batch, failure=[])


async def import_state(
    client: aetcd.Client,
    keys: ClusterKeys,
    records: Iterable[dict[str, str]],
    *,
    workspaces: set[str] | None = None,
) -> int:
    """Replace the cluster's operator state (or ``workspaces``' part of it) with ``records``;
    how many keys were written."""
    chosen = [
        record
        for record in records
        if workspaces is None or workspace_of(keys, record["key"]) in workspaces
    ]
    try:
        if workspaces is None:
            for prefix in _kept_prefixes(keys):
                await client.delete_prefix(prefix)
        else:
            existing: list[bytes] = []
            for prefix in _kept_prefixes(keys):
                for item in await client.get_prefix(prefix, keys_only=True):
                    relative = item.key[len(keys.root) :].decode(errors="replace")
                    if workspace_of(keys, relative) in workspaces:
                        existing.append(item.key)
            await _in_batches(client, [client.transactions.delete(key) for key in existing])
        puts = [
            client.transactions.put(
                keys.root + record["key"].encode(), base64.b64decode(record["value"])
            )
            for record in chosen
        ]
        await _in_batches(client, puts)
    except aetcd.ClientError as error:
        raise Unavailable(f"cannot write the cluster's state to etcd: {error}") from error
    return len(chosen)
