"""Slot ownership in etcd: one winner per slot, epochs as fencing tokens, a watch-fed view."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aetcd
import pytest
import structlog.testing

from node.catalog import CatalogCounts
from registry import (
    ClusterKeys,
    Owner,
    OwnershipView,
    acquire_pinned,
    acquire_slot,
    cancel_drain,
    catalog_counts_of,
    catalog_of,
    catalogued_slots,
    clear_pin,
    release_pinned,
    release_slot,
    request_drain,
    set_pin,
    slot_of,
    update_catalog,
)
from registry.catalog import add_to_catalog, remove_from_catalog
from testkit import eventually

SLOT_COUNT = 64
WAIT_SECONDS = 5.0


@pytest.fixture
async def view(etcd: aetcd.Client, keys: ClusterKeys) -> AsyncIterator[OwnershipView]:
    ownership = OwnershipView(etcd, keys, slot_count=SLOT_COUNT)
    await ownership.start()
    yield ownership
    await ownership.stop()


async def lease_id(etcd: aetcd.Client, ttl_seconds: int = 30) -> int:
    return int((await etcd.lease(ttl_seconds)).id)


class TestAcquireSlot:
    """Exactly one acquirer wins; the others learn who did."""

    async def test_one_of_five_concurrent_acquirers_wins(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        leases = [await lease_id(etcd) for _ in range(5)]
        results = await asyncio.gather(
            *(
                acquire_slot(etcd, keys, 9, node_id=f"n{index}", lease_id=lease)
                for index, lease in enumerate(leases)
            )
        )
        winners = [owner for won, owner in results if won]
        assert len(winners) == 1
        winner = winners[0]
        assert winner is not None
        assert all(owner == winner for won, owner in results if not won)
        stored = await etcd.get(keys.owner(9))
        assert stored is not None
        assert winner.epoch == stored.create_revision
        assert stored.lease == leases[int(winner.node_id[1:])]

    async def test_a_later_owner_has_a_larger_epoch(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        lease = await lease_id(etcd)
        won, first = await acquire_slot(etcd, keys, 1, node_id="n1", lease_id=lease)
        assert won and first is not None
        assert await release_slot(etcd, keys, 1, first)
        won, second = await acquire_slot(etcd, keys, 1, node_id="n2", lease_id=lease)
        assert won and second is not None
        assert second.epoch > first.epoch

    async def test_release_with_a_stale_epoch_deletes_nothing(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        lease = await lease_id(etcd)
        _, first = await acquire_slot(etcd, keys, 2, node_id="n1", lease_id=lease)
        assert first is not None
        assert await release_slot(etcd, keys, 2, first)
        assert not await release_slot(etcd, keys, 2, first)
        _, second = await acquire_slot(etcd, keys, 2, node_id="n2", lease_id=lease)
        assert second is not None
        assert not await release_slot(etcd, keys, 2, first)
        assert await etcd.get(keys.owner(2)) is not None
        assert await release_slot(etcd, keys, 2, second)
        assert await etcd.get(keys.owner(2)) is None

    async def test_revoking_the_lease_orphans_the_slot(
        self, etcd: aetcd.Client, keys: ClusterKeys, view: OwnershipView
    ) -> None:
        lease = await lease_id(etcd)
        _, owner = await acquire_slot(etcd, keys, 3, node_id="n1", lease_id=lease)
        await view.wait_until(lambda v: v.owner_of_slot(3) == owner, timeout_seconds=WAIT_SECONDS)
        await etcd.revoke_lease(lease)
        await view.wait_until(lambda v: v.owner_of_slot(3) is None, timeout_seconds=WAIT_SECONDS)
        assert await etcd.get(keys.owner(3)) is None


class TestPinnedOwnership:
    """A pinned workspace is owned like a slot, under pinned-owners/."""

    async def test_acquire_and_release_pinned(
        self, etcd: aetcd.Client, keys: ClusterKeys, view: OwnershipView
    ) -> None:
        lease = await lease_id(etcd)
        won, owner = await acquire_pinned(etcd, keys, "ws-1", node_id="n1", lease_id=lease)
        assert won and owner is not None
        lost, holder = await acquire_pinned(etcd, keys, "ws-1", node_id="n2", lease_id=lease)
        assert (lost, holder) == (False, owner)
        stored = await etcd.get(keys.pinned_owner("ws-1"))
        assert stored is not None and stored.create_revision == owner.epoch
        await view.wait_until(
            lambda v: v.pinned_owner_of("ws-1") == owner, timeout_seconds=WAIT_SECONDS
        )
        assert not await release_pinned(etcd, keys, "ws-1", Owner("n1", owner.epoch - 1))
        assert await release_pinned(etcd, keys, "ws-1", owner)
        await view.wait_until(lambda v: v.pinned_owners() == {}, timeout_seconds=WAIT_SECONDS)


class TestCatalog:
    """The catalog lists a slot's workspaces with their session counts."""

    async def test_round_trip_with_counts(self, etcd: aetcd.Client, keys: ClusterKeys) -> None:
        workspaces = ["ws-a", "ws-b", "ws-c"]
        for workspace_id in workspaces:
            await add_to_catalog(etcd, keys, workspace_id, slot_count=1)
        await update_catalog(etcd, keys, "ws-b", session_count=4, slot_count=1)
        # add_to_catalog is idempotent and keeps a recorded count.
        await add_to_catalog(etcd, keys, "ws-b", slot_count=1)
        await update_catalog(etcd, keys, "ws-c", session_count=0, slot_count=1)
        assert await catalog_counts_of(etcd, keys, 0) == {"ws-a": 0, "ws-b": 4, "ws-c": 0}
        assert await catalog_of(etcd, keys, 0) == workspaces
        await remove_from_catalog(etcd, keys, "ws-a", slot_count=1)
        assert await catalog_of(etcd, keys, 0) == ["ws-b", "ws-c"]

    async def test_entries_go_under_the_workspace_slot(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        await update_catalog(etcd, keys, "ws-x", session_count=2, slot_count=SLOT_COUNT)
        slot = slot_of("ws-x", SLOT_COUNT)
        assert await catalog_counts_of(etcd, keys, slot) == {"ws-x": 2}
        assert await catalog_of(etcd, keys, (slot + 1) % SLOT_COUNT) == []

    async def test_catalogued_slots_are_the_slots_with_workspaces(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        assert await catalogued_slots(etcd, keys) == set()
        for workspace_id in ("ws-1", "ws-2", "ws-3"):
            await add_to_catalog(etcd, keys, workspace_id, slot_count=SLOT_COUNT)
        # Keys that only look alike are not catalog entries.
        await etcd.put(keys.catalog_root + b"not-a-slot/ws-9", b"0")
        await etcd.put(keys.catalog_root + b"7", b"0")
        expected = {slot_of(ws, SLOT_COUNT) for ws in ("ws-1", "ws-2", "ws-3")}
        assert await catalogued_slots(etcd, keys) == expected
        await remove_from_catalog(etcd, keys, "ws-1", slot_count=SLOT_COUNT)
        left = {slot_of(ws, SLOT_COUNT) for ws in ("ws-2", "ws-3")}
        assert await catalogued_slots(etcd, keys) == left

    def test_catalog_keys_invert(self, keys: ClusterKeys) -> None:
        assert keys.catalog_slot_of(keys.catalog(42, "ws-a")) == 42
        assert keys.catalog_slot_of(keys.node("n1")) is None
        assert keys.catalog_slot_of(keys.catalog_root + b"42/") is None


class TestOwnershipView:
    """The view follows owners, pins, pinned owners and drains from one read and a watch."""

    async def test_initial_load_sees_existing_state(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        lease = await lease_id(etcd)
        _, owner = await acquire_slot(etcd, keys, 5, node_id="n1", lease_id=lease)
        await set_pin(etcd, keys, "ws-p", "n2")
        await request_drain(etcd, keys, "n3")
        ownership = OwnershipView(etcd, keys, slot_count=SLOT_COUNT)
        await ownership.start()
        try:
            assert ownership.slot_owners() == {5: owner}
            assert ownership.pins() == {"ws-p": "n2"}
            assert ownership.is_drain_requested("n3")
            assert not ownership.is_drain_requested("n1")
        finally:
            await ownership.stop()

    async def test_subscribers_follow_every_change(
        self, etcd: aetcd.Client, keys: ClusterKeys, view: OwnershipView
    ) -> None:
        calls: list[int] = []
        view.subscribe(lambda v: calls.append(len(v.slot_owners())))
        assert calls == [0]
        lease = await lease_id(etcd)
        _, owner = await acquire_slot(etcd, keys, 8, node_id="n1", lease_id=lease)
        await view.wait_until(lambda v: v.owner_of_slot(8) == owner, timeout_seconds=WAIT_SECONDS)
        assert calls[-1] == 1
        await set_pin(etcd, keys, "ws-1", "n2")
        await view.wait_until(lambda v: v.pin_of("ws-1") == "n2", timeout_seconds=WAIT_SECONDS)
        await request_drain(etcd, keys, "n1")
        await view.wait_until(lambda v: v.is_drain_requested("n1"), timeout_seconds=WAIT_SECONDS)
        await cancel_drain(etcd, keys, "n1")
        await clear_pin(etcd, keys, "ws-1")
        assert owner is not None
        await release_slot(etcd, keys, 8, owner)
        await view.wait_until(
            lambda v: not v.is_drain_requested("n1") and not v.pins() and not v.slot_owners(),
            timeout_seconds=WAIT_SECONDS,
        )
        # One call at subscribe, then one per change: acquire, pin, drain, undrain, unpin, release.
        assert calls == [0, 1, 1, 1, 1, 1, 0]

    async def test_ignores_node_and_catalog_keys(
        self, etcd: aetcd.Client, keys: ClusterKeys, view: OwnershipView
    ) -> None:
        calls: list[None] = []
        view.subscribe(lambda v: calls.append(None))
        await etcd.put(keys.node("n1"), b"{}")
        await add_to_catalog(etcd, keys, "ws-1", slot_count=SLOT_COUNT)
        await set_pin(etcd, keys, "ws-marker", "n1")
        await view.wait_until(lambda v: v.pin_of("ws-marker") == "n1", timeout_seconds=WAIT_SECONDS)
        assert len(calls) == 2  # at subscribe, then the pin only

    async def test_wait_until_times_out(self, view: OwnershipView) -> None:
        with pytest.raises(TimeoutError):
            await view.wait_until(lambda v: v.owner_of_slot(0) is not None, timeout_seconds=0.1)

    async def test_resyncs_after_the_watch_history_was_compacted(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        lease = await lease_id(etcd)
        _, stale_owner = await acquire_slot(etcd, keys, 1, node_id="n1", lease_id=lease)
        ownership = OwnershipView(etcd, keys, slot_count=SLOT_COUNT)
        stale_revision, _ = await ownership._reload()
        # While nobody watched: the slot changed hands, a pin appeared, history was compacted.
        assert stale_owner is not None
        assert await release_slot(etcd, keys, 1, stale_owner)
        _, new_owner = await acquire_slot(etcd, keys, 1, node_id="n2", lease_id=lease)
        await set_pin(etcd, keys, "ws-1", "n2")
        latest = await etcd.get(keys.pin("ws-1"))
        assert latest is not None
        await etcd.compact(latest.mod_revision)
        # Resuming the watch from before the compaction fails; the view must reload instead.
        with structlog.testing.capture_logs() as events:
            task = asyncio.create_task(ownership._follow(stale_revision))
            await ownership.wait_until(
                lambda v: v.owner_of_slot(1) == new_owner and v.pin_of("ws-1") == "n2",
                timeout_seconds=WAIT_SECONDS,
            )
        try:
            broken = [event for event in events if event["event"] == "watch_broken"]
            assert broken and "RevisionCompactedError" in repr(broken[0]["error"]), events
            # And it follows changes again after the resync.
            await clear_pin(etcd, keys, "ws-1")
            await ownership.wait_until(lambda v: not v.pins(), timeout_seconds=WAIT_SECONDS)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def _catalog_counts(
    etcd: aetcd.Client, keys: ClusterKeys, sessions: dict[str, int]
) -> CatalogCounts:
    """A node's catalog writer whose session counts are read from ``sessions``."""
    return CatalogCounts(
        etcd, keys, slot_count=SLOT_COUNT, session_count=sessions.__getitem__, node_id="n1"
    )


class TestCatalogCounts:
    """A node writes a workspace's first catalog entry at once and coalesces later counts."""

    async def test_first_entry_at_once_then_one_write_per_flush(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        sessions = {"ws-1": 1}
        counts = _catalog_counts(etcd, keys, sessions)
        key = keys.catalog(slot_of("ws-1", SLOT_COUNT), "ws-1")
        await counts.note("ws-1")
        assert await catalog_counts_of(etcd, keys, slot_of("ws-1", SLOT_COUNT)) == {"ws-1": 1}
        for count in range(2, 7):  # a burst of creates
            sessions["ws-1"] = count
            await counts.note("ws-1")
        assert (await etcd.get(key)).version == 1  # nothing written yet

        async def latest_written() -> bool:
            got = await catalog_counts_of(etcd, keys, slot_of("ws-1", SLOT_COUNT))
            return got == {"ws-1": 6}

        await eventually(latest_written, message="the coalesced count is written")
        assert (await etcd.get(key)).version == 2  # the burst cost one write
        await counts.close()

    async def test_close_writes_what_is_pending(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        sessions = {"ws-2": 1}
        counts = _catalog_counts(etcd, keys, sessions)
        await counts.note("ws-2")
        sessions["ws-2"] = 0
        await counts.note("ws-2")
        await counts.close()
        assert await catalog_counts_of(etcd, keys, slot_of("ws-2", SLOT_COUNT)) == {"ws-2": 0}

    async def test_forgotten_counts_are_not_written(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        sessions = {"ws-3": 2}
        counts = _catalog_counts(etcd, keys, sessions)
        await counts.note("ws-3")
        sessions["ws-3"] = 0  # fenced: the sessions now run on another node
        await counts.note("ws-3")
        counts.forget_pending()
        await counts.close()
        assert await catalog_counts_of(etcd, keys, slot_of("ws-3", SLOT_COUNT)) == {"ws-3": 2}
