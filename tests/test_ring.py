"""The consistent-hash ring and the routing table: stable, balanced, minimal movement."""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from registry import DEFAULT_SLOT_COUNT, DRAINING, NodeRecord, Ring, RingTable, slot_of

# Derandomized so the suite is deterministic; few examples because each builds whole rings.
RING_SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


def make_node(node_id: str, *, capacity: int = 100, state: str = "active") -> NodeRecord:
    return NodeRecord(node_id=node_id, address=f"{node_id}:50051", capacity=capacity, state=state)


def assignment(ring: Ring, slot_count: int = DEFAULT_SLOT_COUNT) -> list[str | None]:
    return [ring.node_for_slot(slot) for slot in range(slot_count)]


def routed_ids(table: RingTable) -> list[str | None]:
    records = map(table.node_for_slot, range(table.slot_count))
    return [record.node_id if record else None for record in records]


class TestRingProperties:
    """Properties every ring must have, for any set of node ids."""

    @RING_SETTINGS
    @given(ids=st.sets(node_ids, min_size=1, max_size=6), slot=st.integers(0, 4095))
    def test_same_slot_same_node_across_rebuilds(self, ids: set[str], slot: int) -> None:
        first = Ring(make_node(node_id) for node_id in sorted(ids))
        second = Ring(make_node(node_id) for node_id in sorted(ids, reverse=True))
        assert first.node_for_slot(slot) == second.node_for_slot(slot)
        assert first.node_for_slot(slot) in ids

    @RING_SETTINGS
    @given(ids=st.sets(node_ids, min_size=2, max_size=8), new_id=node_ids)
    def test_adding_a_node_moves_about_one_share_and_only_to_it(
        self, ids: set[str], new_id: str
    ) -> None:
        ids.discard(new_id)
        if len(ids) < 2:
            return
        before = assignment(Ring(make_node(node_id) for node_id in ids))
        after = assignment(Ring(make_node(node_id) for node_id in [*ids, new_id]))
        moved = [slot for slot in range(DEFAULT_SLOT_COUNT) if before[slot] != after[slot]]
        assert all(after[slot] == new_id for slot in moved)
        expected_share = 1 / (len(ids) + 1)
        assert 0.5 * expected_share <= len(moved) / DEFAULT_SLOT_COUNT <= 1.6 * expected_share

    @RING_SETTINGS
    @given(ids=st.sets(node_ids, min_size=8, max_size=8))
    def test_equal_nodes_share_slots_evenly(self, ids: set[str]) -> None:
        loads = Counter(assignment(Ring(make_node(node_id) for node_id in ids)))
        mean = DEFAULT_SLOT_COUNT / len(ids)
        assert set(loads) == ids
        assert max(loads.values()) / mean <= 1.25

    @RING_SETTINGS
    @given(ids=st.sets(node_ids, min_size=1, max_size=6), slot=st.integers(0, 4095))
    def test_preference_list_is_distinct_and_starts_with_the_slots_node(
        self, ids: set[str], slot: int
    ) -> None:
        ring = Ring(make_node(node_id) for node_id in ids)
        preference = ring.preference_list(slot, 3)
        assert len(preference) == min(3, len(ids))
        assert len(set(preference)) == len(preference)
        assert preference[0] == ring.node_for_slot(slot)


class TestRingSpecification:
    """The numbers the design promises, on fixed inputs."""

    def test_third_node_moves_about_a_third_of_workspaces_and_modulo_moves_far_more(self) -> None:
        workspaces = [f"ws-{number}" for number in range(10_000)]
        two = Ring([make_node("node-a"), make_node("node-b")])
        three = Ring([make_node("node-a"), make_node("node-b"), make_node("node-c")])
        ring_moved = sum(
            two.node_for_slot(slot_of(ws)) != three.node_for_slot(slot_of(ws)) for ws in workspaces
        )
        modulo_moved = sum(
            zlib.crc32(ws.encode()) % 2 != zlib.crc32(ws.encode()) % 3 for ws in workspaces
        )
        assert 0.25 <= ring_moved / len(workspaces) <= 0.40
        assert modulo_moved / len(workspaces) >= 0.6

    def test_eight_equal_nodes_stay_within_fifteen_percent_of_the_mean(self) -> None:
        loads = Counter(assignment(Ring(make_node(f"node-{index}") for index in range(8))))
        assert max(loads.values()) / (DEFAULT_SLOT_COUNT / 8) <= 1.15

    def test_weight_follows_capacity(self) -> None:
        ring = Ring([make_node("big", capacity=300), make_node("small", capacity=100)])
        loads = Counter(assignment(ring))
        assert 2.3 <= loads["big"] / loads["small"] <= 3.7

    def test_draining_and_empty_nodes_are_not_on_the_ring(self) -> None:
        ring = Ring(
            [
                make_node("a"),
                make_node("b", state=DRAINING),
                make_node("c", capacity=0),
            ]
        )
        assert ring.node_ids == ["a"]
        assert set(assignment(ring)) == {"a"}
        assert ring.preference_list(7, 3) == ["a"]

    def test_empty_ring_routes_nowhere(self) -> None:
        ring = Ring([])
        assert ring.node_for_slot(0) is None
        assert ring.preference_list(0, 2) == []


class TestRingTable:
    """Slot → node array, rebuilt only when the active set or its weights change."""

    def test_routes_by_slot_and_counts_rebuilds(self) -> None:
        table = RingTable()
        assert table.version == 0
        assert table.route("ws-1") is None
        nodes = {node_id: make_node(node_id) for node_id in ("a", "b")}
        table.update(nodes)
        assert table.version == 1
        routed = table.route("ws-1")
        assert routed is not None
        assert routed.node_id == table.ring.node_for_slot(slot_of("ws-1"))
        assert table.node_for_slot(slot_of("ws-1")) == routed

    def test_load_change_refreshes_records_without_rebuilding(self) -> None:
        table = RingTable()
        nodes = {node_id: make_node(node_id) for node_id in ("a", "b")}
        table.update(nodes)
        before = routed_ids(table)
        moved = {
            node_id: replace(record, load=42, address=f"{node_id}.new:1")
            for node_id, record in nodes.items()
        }
        table.update(moved)
        assert table.version == 1
        routed = table.route("ws-9")
        assert routed is not None
        assert (routed.load, routed.address) == (42, f"{routed.node_id}.new:1")
        assert routed_ids(table) == before

    def test_capacity_change_or_new_node_rebuilds(self) -> None:
        table = RingTable()
        nodes = {node_id: make_node(node_id) for node_id in ("a", "b")}
        table.update(nodes)
        table.update({**nodes, "a": replace(nodes["a"], capacity=200)})
        assert table.version == 2
        table.update({**nodes, "c": make_node("c")})
        assert table.version == 3
        table.update({**nodes, "c": make_node("c")})
        assert table.version == 3

    def test_draining_node_leaves_the_table(self) -> None:
        table = RingTable(slot_count=256)
        nodes = {node_id: make_node(node_id) for node_id in ("a", "b")}
        table.update(nodes)
        assert table.slots_of("b")
        table.update({**nodes, "b": replace(nodes["b"], state=DRAINING)})
        assert table.version == 2
        assert table.slots_of("b") == []
        assert set(routed_ids(table)) == {"a"}

    def test_no_active_node_routes_nowhere(self) -> None:
        table = RingTable()
        table.update({"a": make_node("a")})
        table.update({"a": make_node("a", state=DRAINING)})
        assert table.route("ws-1") is None
