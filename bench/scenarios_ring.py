"""Scenario 4: how many workspaces move when a node joins, and how evenly the ring spreads them.

Pure computation on the real routing code (``registry.routing.RingTable`` over
``registry.slots.slot_of``): no processes. Movement is compared with the ideal 1/(N+1) and with
modulo sharding (``crc32 % n``), the baseline measured in the same run.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from registry import NodeRecord, RingTable

NODE_CAPACITY = 1000
"""Every simulated node's capacity: equal nodes, so the ideal share is exactly 1/(N+1)."""
BALANCE_NODE_COUNT = 8
"""The cluster size the balance figure (max/mean per node) is measured at."""


@dataclass(frozen=True)
class RingSizes:
    """How big scenario 4 runs."""

    smallest_node_count: int
    """N of the first step (N → N+1)."""
    largest_node_count: int
    """N of the last step."""
    workspace_count: int
    """Workspaces routed at every step (one session each for the balance figure)."""


FULL_RING_SIZES = RingSizes(smallest_node_count=2, largest_node_count=16, workspace_count=100_000)
SMOKE_RING_SIZES = RingSizes(smallest_node_count=2, largest_node_count=5, workspace_count=10_000)


def _nodes(count: int) -> dict[str, NodeRecord]:
    return {
        f"node-{index}": NodeRecord(
            node_id=f"node-{index}", address=f"127.0.0.1:{20000 + index}", capacity=NODE_CAPACITY
        )
        for index in range(1, count + 1)
    }


def _owners(table: RingTable, workspaces: list[str]) -> list[str]:
    owners: list[str] = []
    for workspace in workspaces:
        record = table.route(workspace)
        assert record is not None, "a table over active nodes routes every workspace"
        owners.append(record.node_id)
    return owners


def _moved_share(before: list[str], after: list[str]) -> float:
    return sum(1 for old, new in zip(before, after, strict=True) if old != new) / len(before)


def run_ring_scenario(sizes: RingSizes) -> dict[str, Any]:
    """Movement per step N → N+1 (ring, ideal, modulo) and balance at 8 nodes."""
    workspaces = [f"ws-{index}" for index in range(sizes.workspace_count)]
    checksums = [zlib.crc32(workspace.encode()) for workspace in workspaces]
    steps: list[dict[str, float | int]] = []
    table = RingTable()
    table.update(_nodes(sizes.smallest_node_count))
    before = _owners(table, workspaces)
    for node_count in range(sizes.smallest_node_count, sizes.largest_node_count + 1):
        table = RingTable()
        table.update(_nodes(node_count + 1))
        after = _owners(table, workspaces)
        ideal = 1 / (node_count + 1)
        ring_share = _moved_share(before, after)
        modulo_moved = sum(1 for crc in checksums if crc % node_count != crc % (node_count + 1))
        modulo_share = modulo_moved / len(checksums)
        steps.append(
            {
                "nodes_before": node_count,
                "ring_moved_share": ring_share,
                "ideal_share": ideal,
                "modulo_moved_share": modulo_share,
                "ring_ratio_to_ideal": ring_share / ideal,
                "modulo_ratio_to_ideal": modulo_share / ideal,
            }
        )
        before = after
    balance_table = RingTable()
    balance_table.update(_nodes(BALANCE_NODE_COUNT))
    per_node = Counter(_owners(balance_table, workspaces))
    mean = sizes.workspace_count / BALANCE_NODE_COUNT
    return {
        "workspace_count": sizes.workspace_count,
        "steps": steps,
        "movement_worst_ratio_to_ideal": max(float(step["ring_ratio_to_ideal"]) for step in steps),
        "modulo_worst_ratio_to_ideal": max(float(step["modulo_ratio_to_ideal"]) for step in steps),
        "balance_sessions_per_node_8_nodes": dict(sorted(per_node.items())),
        "balance_max_over_mean_8_nodes": max(per_node.values()) / mean,
    }
