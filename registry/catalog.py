"""The catalog in etcd: which workspaces each slot holds (``catalog/<slot>/<ws>``, no lease).

Each entry records the number of sessions the workspace had when last written
(``{"sessions": n}``), so a new owner restores a slot's workspaces without scanning the storage
tree. An entry with 0 sessions stays: removing it is the owning node's decision
(:func:`remove_from_catalog`).
"""

from __future__ import annotations

import json

import aetcd

from registry.etcd import etcd_errors
from registry.keys import ClusterKeys
from registry.slots import DEFAULT_SLOT_COUNT, slot_of


def _catalog_value(session_count: int) -> bytes:
    return json.dumps({"sessions": session_count}).encode()


async def add_to_catalog(
    client: aetcd.Client,
    keys: ClusterKeys,
    workspace_id: str,
    *,
    slot_count: int = DEFAULT_SLOT_COUNT,
) -> None:
    """Record that the slot of ``workspace_id`` holds it (idempotent).

    Creates the entry with 0 sessions only if it is absent, so a recorded count is kept.
    """
    key = keys.catalog(slot_of(workspace_id, slot_count), workspace_id)
    with etcd_errors(f"catalog {workspace_id}"):
        await client.transaction(
            compare=[client.transactions.create(key) == 0],
            success=[client.transactions.put(key, _catalog_value(0))],
            failure=[],
        )


async def update_catalog(
    client: aetcd.Client,
    keys: ClusterKeys,
    workspace_id: str,
    *,
    session_count: int,
    slot_count: int = DEFAULT_SLOT_COUNT,
) -> None:
    """Record that the slot of ``workspace_id`` holds it with ``session_count`` sessions.

    A count of 0 keeps the entry (see the module docstring).
    """
    key = keys.catalog(slot_of(workspace_id, slot_count), workspace_id)
    with etcd_errors(f"catalog {workspace_id}"):
        await client.put(key, _catalog_value(session_count))


MAX_OPS_PER_TRANSACTION = 128
"""etcd's default limit on the operations of one transaction (``--max-txn-ops``)."""


async def update_catalog_counts(
    client: aetcd.Client,
    keys: ClusterKeys,
    counts: dict[str, int],
    *,
    slot_count: int = DEFAULT_SLOT_COUNT,
) -> None:
    """Like :func:`update_catalog` for many workspaces at once: one transaction per
    ``MAX_OPS_PER_TRANSACTION`` of them."""
    items = sorted(counts.items())
    for start in range(0, len(items), MAX_OPS_PER_TRANSACTION):
        chunk = items[start : start + MAX_OPS_PER_TRANSACTION]
        puts = [
            client.transactions.put(
                keys.catalog(slot_of(workspace_id, slot_count), workspace_id),
                _catalog_value(count),
            )
            for workspace_id, count in chunk
        ]
        with etcd_errors(f"catalog {len(chunk)} workspaces"):
            await client.transaction(compare=[], success=puts, failure=[])


async def remove_from_catalog(
    client: aetcd.Client,
    keys: ClusterKeys,
    workspace_id: str,
    *,
    slot_count: int = DEFAULT_SLOT_COUNT,
) -> None:
    """Forget that the slot of ``workspace_id`` holds it (idempotent)."""
    with etcd_errors(f"uncatalog {workspace_id}"):
        await client.delete(keys.catalog(slot_of(workspace_id, slot_count), workspace_id))


async def catalog_counts_of(client: aetcd.Client, keys: ClusterKeys, slot: int) -> dict[str, int]:
    """The workspaces the slot holds, each with its last recorded session count."""
    prefix = keys.catalog_prefix(slot)
    with etcd_errors(f"read the catalog of slot {slot}"):
        response = await client.get_prefix(prefix)
    counts: dict[str, int] = {}
    for item in response:
        workspace_id = item.key[len(prefix) :].decode()
        try:
            counts[workspace_id] = int(json.loads(item.value)["sessions"])
        except (ValueError, TypeError, KeyError):
            # An unreadable count still means the slot holds the workspace.
            counts[workspace_id] = 0
    return counts


async def catalog_of(client: aetcd.Client, keys: ClusterKeys, slot: int) -> list[str]:
    """The workspaces the slot holds, sorted."""
    return sorted(await catalog_counts_of(client, keys, slot))


async def catalogued_slots(client: aetcd.Client, keys: ClusterKeys) -> set[int]:
    """The slots that hold at least one workspace: one keys-only range read."""
    with etcd_errors("read the catalog"):
        response = await client.get_prefix(keys.catalog_root, keys_only=True)
    slots: set[int] = set()
    for item in response:
        slot = keys.catalog_slot_of(item.key)
        if slot is not None:
            slots.add(slot)
    return slots
