"""Slot ownership in etcd: who runs a slot now, under which epoch (fencing token).

``owners/<slot>`` is created only by a transaction that requires it to be absent
(``create_revision == 0``), under the owner's lease; its create revision is the
*epoch*. Exactly one node wins an acquire; the others learn the holder. A release
deletes the key only if its create revision is still the releaser's epoch, so a
stale owner cannot delete a successor's key. Pins (``pins/<ws>``, no lease) are an
operator's override; the pinned node owns ``pinned-owners/<ws>`` the same way.
``drain/<node_id>`` (no lease) is an operator's request that a node drain.
:class:`OwnershipView` is the watch-fed copy of all of it, and of which slots the catalog
(``catalog/<slot>/<ws>``) lists workspaces for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd
import structlog

from registry.etcd import etcd_errors
from registry.keys import ClusterKeys
from registry.mirror import WatchMirror
from registry.slots import DEFAULT_SLOT_COUNT

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Owner:
    """The holder of one ownership key."""

    node_id: str
    epoch: int
    """Create revision of the key: grows with every new owner; the fencing token."""


def _owner_value(node_id: str) -> bytes:
    return json.dumps({"node_id": node_id}).encode()


def _parse_owner(key: bytes, value: bytes, create_revision: int) -> Owner | None:
    try:
        node_id = json.loads(value)["node_id"]
    except (ValueError, TypeError, KeyError) as error:
        _log.warning("owner_record_invalid", key=key, error=error)
        return None
    return Owner(node_id=str(node_id), epoch=int(create_revision))


async def _acquire(
    client: aetcd.Client, key: bytes, *, node_id: str, lease_id: int
) -> tuple[bool, Owner | None]:
    with etcd_errors(f"acquire {key!r}"):
        succeeded, responses = await client.transaction(
            compare=[client.transactions.create(key) == 0],
            success=[client.transactions.put(key, _owner_value(node_id), lease=lease_id)],
            failure=[client.transactions.get(key)],
        )
    if succeeded:
        # The put created the key, so the txn's revision is the key's create revision.
        return True, Owner(node_id=node_id, epoch=int(responses[0].response_put.header.revision))
    found = responses[0] if responses else []
    if not found:
        return False, None
    _, holder = found[0]
    return False, _parse_owner(key, holder.value, holder.create_revision)


async def _release(client: aetcd.Client, key: bytes, owner: Owner) -> bool:
    with etcd_errors(f"release {key!r}"):
        succeeded, _ = await client.transaction(
            compare=[client.transactions.create(key) == owner.epoch],
            success=[client.transactions.delete(key)],
            failure=[],
        )
    return bool(succeeded)


async def acquire_slot(
    client: aetcd.Client, keys: ClusterKeys, slot: int, *, node_id: str, lease_id: int
) -> tuple[bool, Owner | None]:
    """Try to take ``owners/<slot>`` under ``lease_id``: ``(True, me)`` if won,
    ``(False, holder)`` if someone holds it (holder None if it vanished meanwhile)."""
    return await _acquire(client, keys.owner(slot), node_id=node_id, lease_id=lease_id)


async def release_slot(client: aetcd.Client, keys: ClusterKeys, slot: int, owner: Owner) -> bool:
    """Delete ``owners/<slot>`` if it is still held under ``owner.epoch``; True if deleted."""
    return await _release(client, keys.owner(slot), owner)


async def acquire_pinned(
    client: aetcd.Client, keys: ClusterKeys, workspace_id: str, *, node_id: str, lease_id: int
) -> tuple[bool, Owner | None]:
    """Like :func:`acquire_slot`, for the pinned workspace's ``pinned-owners/<ws>``."""
    return await _acquire(
        client, keys.pinned_owner(workspace_id), node_id=node_id, lease_id=lease_id
    )


async def release_pinned(
    client: aetcd.Client, keys: ClusterKeys, workspace_id: str, owner: Owner
) -> bool:
    """Like :func:`release_slot`, for ``pinned-owners/<ws>``."""
    return await _release(client, keys.pinned_owner(workspace_id), owner)


async def takeover_epoch(client: aetcd.Client, keys: ClusterKeys, workspace_id: str) -> int | None:
    """An epoch for a slot owner taking ``workspace_id`` back from a pinned owner: the store's
    revision now, read while ``pinned-owners/<ws>`` is absent — newer than every revision that
    key was ever created at, so the pinned owner's late writes are refused by it (a slot
    key's own create revision may be older). None while a pinned owner still holds the key."""
    key = keys.pinned_owner(workspace_id)
    with etcd_errors(f"read the pinned owner of {workspace_id}"):
        response = await client.get_prefix(key)
    if any(item.key == key for item in response):
        return None
    return int(response.header.revision)


async def set_pin(client: aetcd.Client, keys: ClusterKeys, workspace_id: str, node_id: str) -> None:
    """Pin ``workspace_id`` to ``node_id`` (operator intent; no lease)."""
    with etcd_errors(f"pin {workspace_id}"):
        await client.put(keys.pin(workspace_id), node_id.encode())


async def clear_pin(client: aetcd.Client, keys: ClusterKeys, workspace_id: str) -> None:
    """Remove the pin of ``workspace_id``; it goes back to its slot."""
    with etcd_errors(f"unpin {workspace_id}"):
        await client.delete(keys.pin(workspace_id))


async def request_drain(client: aetcd.Client, keys: ClusterKeys, node_id: str) -> None:
    """Ask ``node_id`` to drain (operator intent; no lease, so it survives the node's restart)."""
    with etcd_errors(f"request a drain of {node_id}"):
        await client.put(keys.drain(node_id), node_id.encode())


async def cancel_drain(client: aetcd.Client, keys: ClusterKeys, node_id: str) -> None:
    """Withdraw the drain request of ``node_id``."""
    with etcd_errors(f"cancel the drain of {node_id}"):
        await client.delete(keys.drain(node_id))


_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


def _store(table: dict[_Key, _Value], name: _Key, entry: _Value | None) -> bool:
    """Set ``table[name]`` (delete it when ``entry`` is None); True if that changed it."""
    if entry is None:
        return table.pop(name, None) is not None
    if table.get(name) == entry:
        return False
    table[name] = entry
    return True


class OwnershipView(WatchMirror["OwnershipView"]):
    """A watch-fed copy of ``owners/``, ``pins/``, ``pinned-owners/`` and ``drain/``: never an etcd
    read per lookup; resyncs after a broken watch or compaction. Its snapshot is itself."""

    def __init__(
        self, client: aetcd.Client, keys: ClusterKeys, *, slot_count: int = DEFAULT_SLOT_COUNT
    ) -> None:
        # One watch over the cluster root; the few node and catalog events are skipped.
        super().__init__(client, watch_prefix=keys.root, name="ownership")
        self._keys = keys
        self._slot_count = slot_count
        self._slot_owners: dict[int, Owner] = {}
        self._pins: dict[str, str] = {}
        self._pinned_owners: dict[str, Owner] = {}
        self._drains: dict[str, bool] = {}
        self._catalogued: dict[int, set[bytes]] = {}
        """Per slot, the catalog keys under it (which workspaces the slot holds)."""

    def snapshot(self) -> OwnershipView:
        """The view itself: read it through its lookups."""
        return self

    def owner_of_slot(self, slot: int) -> Owner | None:
        """Who holds ``owners/<slot>`` now (None: orphan)."""
        return self._slot_owners.get(slot)

    def slot_owners(self) -> dict[int, Owner]:
        """Every held slot (a copy)."""
        return dict(self._slot_owners)

    def pin_of(self, workspace_id: str) -> str | None:
        """The node ``workspace_id`` is pinned to, if any."""
        return self._pins.get(workspace_id)

    def pins(self) -> dict[str, str]:
        """Every pin: workspace → node (a copy)."""
        return dict(self._pins)

    def pinned_owner_of(self, workspace_id: str) -> Owner | None:
        """Who holds ``pinned-owners/<ws>`` now."""
        return self._pinned_owners.get(workspace_id)

    def pinned_owners(self) -> dict[str, Owner]:
        """Every held pinned workspace (a copy)."""
        return dict(self._pinned_owners)

    def is_drain_requested(self, node_id: str) -> bool:
        """Whether an operator asked ``node_id`` to drain."""
        return node_id in self._drains

    def catalogued_slots(self) -> set[int]:
        """The slots the catalog lists at least one workspace for (a copy)."""
        return set(self._catalogued)

    def _slot_of_key(self, key: bytes) -> int | None:
        text = key[len(self._keys.owners_prefix) :].decode()
        if not text.isdigit() or int(text) >= self._slot_count:
            _log.warning("owner_key_invalid", key=key)
            return None
        return int(text)

    def _store_key(self, key: bytes, value: bytes | None, create_revision: int) -> bool:
        """Apply one key's new value (None: deleted); True if the copy changed.

        An unreadable owner record counts as absent: nobody can be routed to it.
        """
        keys = self._keys
        if key.startswith(keys.owners_prefix):
            slot = self._slot_of_key(key)
            if slot is None:
                return False
            owner = None if value is None else _parse_owner(key, value, create_revision)
            return _store(self._slot_owners, slot, owner)
        if key.startswith(keys.pinned_owners_prefix):
            workspace_id = key[len(keys.pinned_owners_prefix) :].decode()
            owner = None if value is None else _parse_owner(key, value, create_revision)
            return _store(self._pinned_owners, workspace_id, owner)
        if key.startswith(keys.pins_prefix):
            workspace_id = key[len(keys.pins_prefix) :].decode()
            return _store(self._pins, workspace_id, None if value is None else value.decode())
        if key.startswith(keys.drain_prefix):
            node_id = key[len(keys.drain_prefix) :].decode()
            return _store(self._drains, node_id, None if value is None else True)
        if key.startswith(keys.catalog_root):
            self._store_catalog_key(key, is_present=value is not None)
            return False  # a new workspace is no change subscribers act on
        return False  # nodes/: followed by the membership watcher

    def _store_catalog_key(self, key: bytes, *, is_present: bool) -> None:
        slot = self._keys.catalog_slot_of(key)
        if slot is None:
            return
        if is_present:
            self._catalogued.setdefault(slot, set()).add(key)
            return
        held = self._catalogued.get(slot)
        if held is not None:
            held.discard(key)
            if not held:
                del self._catalogued[slot]

    def _apply(self, event: Any) -> bool:
        value = event.kv.value if event.kind == aetcd.EventKind.PUT else None
        return self._store_key(event.kv.key, value, event.kv.create_revision)

    def _tables(self) -> tuple[object, ...]:
        # The tables themselves, not copies: _reload replaces them with new dicts.
        return (self._slot_owners, self._pins, self._pinned_owners, self._drains)

    async def _reload(self) -> tuple[int, bool]:
        """One read per sub-prefix (the catalog and node records are not loaded); the watch
        starts after the first read, so events the later reads already reflect are replayed,
        which is harmless: applying a key's events in order ends at its latest value."""
        keys = self._keys
        prefixes = (keys.owners_prefix, keys.pins_prefix, keys.pinned_owners_prefix)
        responses = [await self._client.get_prefix(prefix) for prefix in prefixes]
        responses.append(await self._client.get_prefix(keys.drain_prefix))
        catalog = await self._client.get_prefix(keys.catalog_root, keys_only=True)
        before = self._tables()
        self._slot_owners, self._pins, self._pinned_owners, self._drains = {}, {}, {}, {}
        self._catalogued = {}
        for response in responses:
            for item in response:
                self._store_key(item.key, item.value, item.create_revision)
        for item in catalog:
            self._store_catalog_key(item.key, is_present=True)
        return int(responses[0].header.revision), self._tables() != before
