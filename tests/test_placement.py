"""Placement: the first node of a slot's preference list that is active and below its cap."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from registry import DRAINING, NodeRecord, RingTable, place_slot
from registry.placement import can_take_work

SLOT_COUNT = 64
PLACEMENT_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def make_nodes(count: int, *, capacity: int = 10) -> dict[str, NodeRecord]:
    return {
        f"n{index}": NodeRecord(node_id=f"n{index}", address=f"h{index}:1", capacity=capacity)
        for index in range(count)
    }


def routing_for(nodes: dict[str, NodeRecord]) -> RingTable:
    routing = RingTable(slot_count=SLOT_COUNT)
    routing.update(nodes)
    return routing


def preference(routing: RingTable, slot: int) -> list[str]:
    return routing.ring.preference_list(slot, len(routing.ring.node_ids))


class TestPlaceSlot:
    """Bounded-load placement over the ring's preference list."""

    def test_equals_the_ring_choice_when_everyone_qualifies(self) -> None:
        nodes = make_nodes(5)
        routing = routing_for(nodes)
        for slot in range(SLOT_COUNT):
            assert place_slot(routing, nodes, slot) == routing.ring.node_for_slot(slot)

    def test_is_deterministic_across_independent_tables(self) -> None:
        nodes = make_nodes(4)
        # Records whose load differs from the ring's build input: only the inputs matter.
        loaded = {node_id: replace(record, load=3) for node_id, record in nodes.items()}
        first, second = routing_for(nodes), routing_for(dict(reversed(list(nodes.items()))))
        placements = [place_slot(first, loaded, slot) for slot in range(SLOT_COUNT)]
        assert placements == [place_slot(second, loaded, slot) for slot in range(SLOT_COUNT)]

    def test_skips_a_draining_first_choice(self) -> None:
        nodes = make_nodes(3)
        routing = routing_for(nodes)
        slot = 7
        first, second = preference(routing, slot)[:2]
        nodes[first] = replace(nodes[first], state=DRAINING)
        assert place_slot(routing, nodes, slot) == second

    def test_skips_a_full_first_choice(self) -> None:
        nodes = make_nodes(3)
        routing = routing_for(nodes)
        slot = 11
        first, second = preference(routing, slot)[:2]
        nodes[first] = replace(nodes[first], load=nodes[first].capacity)
        assert place_slot(routing, nodes, slot) == second

    def test_falls_through_to_the_last_of_the_list(self) -> None:
        nodes = make_nodes(4)
        routing = routing_for(nodes)
        slot = 3
        order = preference(routing, slot)
        for node_id in order[:-1]:
            nodes[node_id] = replace(nodes[node_id], load=nodes[node_id].capacity + 1)
        assert place_slot(routing, nodes, slot) == order[-1]

    def test_skips_a_node_that_left_since_the_ring_was_built(self) -> None:
        nodes = make_nodes(3)
        routing = routing_for(nodes)
        slot = 5
        first, second = preference(routing, slot)[:2]
        del nodes[first]
        assert place_slot(routing, nodes, slot) == second

    def test_none_when_nobody_qualifies(self) -> None:
        nodes = make_nodes(3)
        routing = routing_for(nodes)
        nodes = {
            "n0": replace(nodes["n0"], state=DRAINING),
            "n1": replace(nodes["n1"], load=10),
            "n2": replace(nodes["n2"], load=12),
        }
        assert all(place_slot(routing, nodes, slot) is None for slot in range(SLOT_COUNT))

    def test_none_on_an_empty_ring(self) -> None:
        assert place_slot(RingTable(slot_count=SLOT_COUNT), {}, 0) is None

    def test_can_take_work(self) -> None:
        record = make_nodes(1)["n0"]
        assert can_take_work(record)
        assert not can_take_work(None)
        assert not can_take_work(replace(record, state=DRAINING))
        assert not can_take_work(replace(record, load=record.capacity))


node_states = st.tuples(st.booleans(), st.integers(min_value=0, max_value=12))


class TestPlacementProperty:
    """Whatever the loads and states, placement never picks a draining or full node."""

    @PLACEMENT_SETTINGS
    @given(
        states=st.lists(node_states, min_size=1, max_size=6),
        slot=st.integers(min_value=0, max_value=SLOT_COUNT - 1),
    )
    def test_never_places_on_a_draining_or_full_node(
        self, states: list[tuple[bool, int]], slot: int
    ) -> None:
        built = make_nodes(len(states))
        routing = routing_for(built)
        nodes = {
            node_id: replace(record, state=DRAINING if is_draining else record.state, load=load)
            for (node_id, record), (is_draining, load) in zip(built.items(), states, strict=True)
        }
        chosen = place_slot(routing, nodes, slot)
        qualifying = [
            node_id for node_id in preference(routing, slot) if can_take_work(nodes[node_id])
        ]
        if chosen is None:
            assert qualifying == []
        else:
            assert nodes[chosen].is_active
            assert nodes[chosen].load < nodes[chosen].capacity
            assert chosen == qualifying[0]
