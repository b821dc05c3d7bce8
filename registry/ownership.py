"""Slot ownership in etcd: who runs a slot now, under which epoch (fencing token).

``owners/<slot>`` is created only by a transaction that requires it to be absent
(``create_revision == 0``), under the owner's lease; its create revision is the
*epoch*. Exactly one node wins an acquire; the others learn the holder. A release
deletes the key only if its create revision is still the releaser's epoch, so a
stale owner cannot delete a successor's key. Pins (``pins/<ws>``, no lease) are an
operator's override; the pinned node owns ``pinned-owners/<ws>`` the same way.
``drain/<node_id>`` (no lease) is an operator's request that a node drain.
``catalog/<slot>/<ws>`` (no lease) lists the workspaces a slot holds, with the number of
sessions each had when last recorded (``{"sessions": n}``), so a new owner restores them
without scanning the storage tree. An entry with 0 sessions stays: removing it is the
owning node's decision (:func:`remove_from_catalog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import aetcd

from registry.background import stop_task
from registry.errors import Unavailable
from registry.keys import ClusterKeys
from registry.slots import DEFAULT_SLOT_COUNT, slot_of

_log = logging.getLogger(__name__)

_RETRY_FIRST_SECONDS = 0.1
_RETRY_MAX_SECONDS = 2.0


@dataclass(frozen=True)
class Owner:
    """The holder of one ownership key."""

    node_id: str
    epoch: int
    """Create revision of the key: grows with every new owner; the fencing token."""


@contextlib.contextmanager
def _etcd_errors(action: str) -> Iterator[None]:
    # Callers handle one error family; etcd's own errors become Unavailable at this boundary.
    try:
        yield
    except aetcd.ClientError as error:
        raise Unavailable(f"cannot {action}: {error}") from error


def _owner_value(node_id: str) -> bytes:
    return json.dumps({"node_id": node_id}).encode()


def _parse_owner(key: bytes, value: bytes, create_revision: int) -> Owner | None:
    try:
        node_id = json.loads(value)["node_id"]
    except (ValueError, TypeError, KeyError) as error:
        _log.warning("owner_record_invalid key=%r error=%r", key, error)
        return None
    return Owner(node_id=str(node_id), epoch=int(create_revision))


async def _acquire(
    client: aetcd.Client, key: bytes, *, node_id: str, lease_id: int
) -> tuple[bool, Owner | None]:
    with _etcd_errors(f"acquire {key!r}"):
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
    with _etcd_errors(f"release {key!r}"):
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


async def set_pin(client: aetcd.Client, keys: ClusterKeys, workspace_id: str, node_id: str) -> None:
    """Pin ``workspace_id`` to ``node_id`` (operator intent; no lease)."""
    with _etcd_errors(f"pin {workspace_id}"):
        await client.put(keys.pin(workspace_id), node_id.encode())


async def clear_pin(client: aetcd.Client, keys: ClusterKeys, workspace_id: str) -> None:
    """Remove the pin of ``workspace_id``; it goes back to its slot."""
    with _etcd_errors(f"unpin {workspace_id}"):
        await client.delete(keys.pin(workspace_id))


async def request_drain(client: aetcd.Client, keys: ClusterKeys, node_id: str) -> None:
    """Ask ``node_id`` to drain (operator intent; no lease, so it survives the node's restart)."""
    with _etcd_errors(f"request a drain of {node_id}"):
        await client.put(keys.drain(node_id), node_id.encode())


async def cancel_drain(client: aetcd.Client, keys: ClusterKeys, node_id: str) -> None:
    """Withdraw the drain request of ``node_id``."""
    with _etcd_errors(f"cancel the drain of {node_id}"):
        await client.delete(keys.drain(node_id))


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
    with _etcd_errors(f"catalog {workspace_id}"):
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
    with _etcd_errors(f"catalog {workspace_id}"):
        await client.put(key, _catalog_value(session_count))


async def remove_from_catalog(
    client: aetcd.Client,
    keys: ClusterKeys,
    workspace_id: str,
    *,
    slot_count: int = DEFAULT_SLOT_COUNT,
) -> None:
    """Forget that the slot of ``workspace_id`` holds it (idempotent)."""
    with _etcd_errors(f"uncatalog {workspace_id}"):
        await client.delete(keys.catalog(slot_of(workspace_id, slot_count), workspace_id))


async def catalog_counts_of(client: aetcd.Client, keys: ClusterKeys, slot: int) -> dict[str, int]:
    """The workspaces the slot holds, each with its last recorded session count."""
    prefix = keys.catalog_prefix(slot)
    with _etcd_errors(f"read the catalog of slot {slot}"):
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
    with _etcd_errors("read the catalog"):
        response = await client.get_prefix(keys.catalog_root, keys_only=True)
    slots: set[int] = set()
    for item in response:
        slot = keys.catalog_slot_of(item.key)
        if slot is not None:
            slots.add(slot)
    return slots


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


class OwnershipView:
    """A watch-fed copy of ``owners/``, ``pins/``, ``pinned-owners/`` and ``drain/``: never an etcd
    read per lookup; resyncs after a broken watch or compaction."""

    def __init__(
        self, client: aetcd.Client, keys: ClusterKeys, *, slot_count: int = DEFAULT_SLOT_COUNT
    ) -> None:
        self._client = client
        self._keys = keys
        self._slot_count = slot_count
        self._slot_owners: dict[int, Owner] = {}
        self._pins: dict[str, str] = {}
        self._pinned_owners: dict[str, Owner] = {}
        self._drains: dict[str, bool] = {}
        self._subscribers: list[Callable[[], None]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the current state, then follow changes.

        Raises ``Unavailable`` if the first read fails.
        """
        with _etcd_errors("read the ownership state"):
            revision = await self._load()
        self._task = asyncio.create_task(self._follow(revision), name="ownership-watch")

    async def stop(self) -> None:
        """Stop watching."""
        await stop_task(self._task)
        self._task = None

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

    def drain_requests(self) -> frozenset[str]:
        """The nodes an operator asked to drain."""
        return frozenset(self._drains)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` now and after every change (owners, pins, pinned owners, drains)."""
        self._subscribers.append(callback)
        callback()

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        self._subscribers.remove(callback)

    async def wait_until(
        self, predicate: Callable[[OwnershipView], bool], *, timeout_seconds: float
    ) -> None:
        """Return once ``predicate(self)`` holds; ``TimeoutError`` at the deadline."""
        async with asyncio.timeout(timeout_seconds):
            while True:
                changed = self._changed
                if predicate(self):
                    return
                await changed.wait()

    def _notify(self) -> None:
        # A fresh event per change, so a waiter that saw the old state always wakes up.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:
                # A failing subscriber must not end the watch everyone else relies on.
                _log.exception("ownership_callback_failed callback=%r", callback)

    def _slot_of_key(self, key: bytes) -> int | None:
        text = key[len(self._keys.owners_prefix) :].decode()
        if not text.isdigit() or int(text) >= self._slot_count:
            _log.warning("owner_key_invalid key=%r", key)
            return None
        return int(text)

    def _apply(self, key: bytes, value: bytes | None, create_revision: int) -> bool:
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
        return False  # nodes/, catalog/: followed elsewhere or read on demand

    def _snapshot(self) -> tuple[object, ...]:
        # The tables themselves, not copies: _load replaces them with new dicts, never mutates.
        return (self._slot_owners, self._pins, self._pinned_owners, self._drains)

    async def _load(self) -> int:
        """Replace the copy with a fresh read; return the revision to watch after.

        One read per sub-prefix (the catalog and node records are not loaded); the watch starts
        after the first read, so events the later reads already reflect are replayed, which is
        harmless: applying a key's events in order ends at its latest value.
        """
        keys = self._keys
        prefixes = (keys.owners_prefix, keys.pins_prefix, keys.pinned_owners_prefix)
        responses = [await self._client.get_prefix(prefix) for prefix in prefixes]
        responses.append(await self._client.get_prefix(keys.drain_prefix))
        before = self._snapshot()
        self._slot_owners, self._pins, self._pinned_owners, self._drains = {}, {}, {}, {}
        for response in responses:
            for item in response:
                self._apply(item.key, item.value, item.create_revision)
        if self._snapshot() != before:
            self._notify()
        return int(responses[0].header.revision)

    async def _follow(self, revision: int) -> None:
        loop = asyncio.get_running_loop()
        delay_seconds = _RETRY_FIRST_SECONDS
        while True:
            started_at = loop.time()
            try:
                await self._watch_from(revision + 1)
            except Exception as error:
                # etcd restarted, the stream broke or the revision was compacted.
                _log.warning("ownership_watch_broken error=%r", error)
            if loop.time() - started_at > _RETRY_MAX_SECONDS:
                # The watch was healthy for a while: this is a new outage, not the same one.
                delay_seconds = _RETRY_FIRST_SECONDS
            while True:
                await asyncio.sleep(delay_seconds)
                delay_seconds = min(delay_seconds * 2, _RETRY_MAX_SECONDS)
                try:
                    revision = await self._load()
                except aetcd.ClientError as error:
                    _log.warning("ownership_resync_failed error=%r", error)
                    continue
                break

    async def _watch_from(self, start_revision: int) -> None:
        # One watch over the cluster root; the few node and catalog events are skipped in _apply.
        watch = await self._client.watch_prefix(self._keys.root, start_revision=start_revision)
        try:
            async for event in watch:
                is_put = event.kind == aetcd.EventKind.PUT
                value = event.kv.value if is_put else None
                if self._apply(event.kv.key, value, event.kv.create_revision):
                    self._notify()
        finally:
            await watch.cancel()
