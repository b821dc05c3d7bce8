"""``sessionmesh.v1.AdminService``: the operator API the gateway serves (meshctl talks to it).

Reads answer from the router's watch-fed copies of membership and the owners map. Writes only
record intent in etcd (a drain request, a pin) and return at once: each node's reconciler
converges on it by itself, so the gateway never moves a slot and a plan is only ever a report.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aetcd
import grpc
import structlog

from gateway import metrics
from gateway.probes import health_of
from protos import admin_pb2, admin_pb2_grpc
from registry import (
    ClusterKeys,
    InvalidInput,
    NodeRecord,
    NotFound,
    OwnershipView,
    Unavailable,
    cancel_drain,
    catalog_counts_of,
    clear_pin,
    place_slot,
    quarantined,
    request_drain,
    rpc_boundary,
    set_pin,
    slot_of,
    validate_id,
)
from routing import Router

Context = grpc.aio.ServicerContext[Any, Any]

UNKNOWN_SESSION_COUNT = -1
"""Session count of a workspace the catalog does not record."""
MAX_CATALOG_READS_IN_FLIGHT = 16
"""etcd reads one rebalance plan sends at once."""

_log = structlog.get_logger(__name__)


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Answers admin calls from the gateway's router and ownership view."""

    def __init__(
        self,
        *,
        router: Router,
        ownership: OwnershipView,
        etcd: aetcd.Client,
        keys: ClusterKeys,
        label: str = "",
    ) -> None:
        self._router = router
        self._ownership = ownership
        self._etcd = etcd
        self._keys = keys
        self.label = label
        """The ``gateway`` label of this servicer's metrics."""

    def rpc_finished(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None:
        """Count one answered call (told by :func:`registry.rpc_boundary`)."""
        metrics.ADMIN_CALLS.labels(self.label, method, code.name).inc()

    @property
    def _slot_count(self) -> int:
        return self._router.ring.slot_count

    def _owned_slot_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for owner in self._ownership.slot_owners().values():
            counts[owner.node_id] = counts.get(owner.node_id, 0) + 1
        return counts

    def _live_node(self, node_id: str, *, field: str) -> NodeRecord:
        validate_id(node_id, field=field)
        record = self._router.nodes.get(node_id)
        if record is None:
            raise NotFound(f"node {node_id!r} is not alive in cluster {self._router.cluster}")
        return record

    async def _catalogs(self, slots: list[int]) -> list[dict[str, int]]:
        """Each slot's catalog (workspace → sessions), a bounded number of etcd reads at once."""
        gate = asyncio.Semaphore(MAX_CATALOG_READS_IN_FLIGHT)

        async def read(slot: int) -> dict[str, int]:
            async with gate:
                return await catalog_counts_of(self._etcd, self._keys, slot)

        return list(await asyncio.gather(*(read(slot) for slot in slots)))

    @rpc_boundary
    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: Context
    ) -> admin_pb2.ListNodesResponse:
        """Every live node with load, state and owned slots."""
        owned = self._owned_slot_counts()
        nodes = [
            admin_pb2.NodeStatus(
                node_id=record.node_id,
                address=record.address,
                state=record.state,
                capacity=record.capacity,
                load=record.load,
                zone=record.zone,
                owned_slot_count=owned.get(record.node_id, 0),
                owned_slot_share=_share(owned.get(record.node_id, 0), self._slot_count),
                is_drain_requested=self._ownership.is_drain_requested(record.node_id),
            )
            for record in sorted(self._router.nodes.values(), key=lambda node: node.node_id)
        ]
        return admin_pb2.ListNodesResponse(nodes=nodes, slot_count=self._slot_count)

    @rpc_boundary
    async def DescribeRing(
        self, request: admin_pb2.DescribeRingRequest, context: Context
    ) -> admin_pb2.DescribeRingResponse:
        """Per node: its share of slots by the ring and by the owners map."""
        ring = self._router.ring
        weights = ring.ring.weights
        owned = self._owned_slot_counts()
        node_ids = sorted(set(self._router.nodes) | set(owned))
        members = []
        for node_id in node_ids:
            ring_slot_count = len(ring.slots_of(node_id))
            members.append(
                admin_pb2.RingMember(
                    node_id=node_id,
                    weight=weights.get(node_id, 0),
                    ring_slot_count=ring_slot_count,
                    ring_slot_share=_share(ring_slot_count, self._slot_count),
                    owned_slot_count=owned.get(node_id, 0),
                    owned_slot_share=_share(owned.get(node_id, 0), self._slot_count),
                )
            )
        return admin_pb2.DescribeRingResponse(
            members=members,
            slot_count=self._slot_count,
            ring_version=ring.version,
            orphan_slot_count=self._slot_count - sum(owned.values()),
        )

    @rpc_boundary
    async def LocateWorkspace(
        self, request: admin_pb2.LocateWorkspaceRequest, context: Context
    ) -> admin_pb2.LocateWorkspaceResponse:
        """Slot, owner and epoch, ring and placement choice, pin, routed node, and the session
        count the slot's catalog records (one etcd read)."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        slot = slot_of(workspace_id, self._slot_count)
        ring = self._router.ring
        response = admin_pb2.LocateWorkspaceResponse(
            workspace_id=workspace_id,
            slot=slot,
            pinned_node_id=self._ownership.pin_of(workspace_id) or "",
            placement_node_id=place_slot(ring, self._router.nodes, slot) or "",
            session_count=UNKNOWN_SESSION_COUNT,
        )
        ring_node = ring.node_for_slot(slot)
        if ring_node is not None:
            response.ring_node_id = ring_node.node_id
        owner = self._ownership.owner_of_slot(slot)
        if owner is not None:
            response.owner_node_id, response.owner_epoch = owner.node_id, owner.epoch
        pinned_owner = self._ownership.pinned_owner_of(workspace_id)
        if pinned_owner is not None:
            response.pinned_owner_node_id = pinned_owner.node_id
            response.pinned_owner_epoch = pinned_owner.epoch
        with contextlib.suppress(Unavailable):
            routed = self._router.resolve(workspace_id)
            response.routed_node_id, response.routed_address = routed.node_id, routed.address
        catalog = await catalog_counts_of(self._etcd, self._keys, slot)
        response.is_cataloged = workspace_id in catalog
        response.session_count = catalog.get(workspace_id, UNKNOWN_SESSION_COUNT)
        return response

    @rpc_boundary
    async def DrainNode(
        self, request: admin_pb2.DrainNodeRequest, context: Context
    ) -> admin_pb2.DrainNodeResponse:
        """Write the node's drain request; its reconciler hands its slots off."""
        record = self._live_node(request.node_id, field="node_id")
        await request_drain(self._etcd, self._keys, record.node_id)
        _log.info("admin_drain_requested", node_id=record.node_id)
        return admin_pb2.DrainNodeResponse(
            node_id=record.node_id,
            owned_slot_count=self._owned_slot_counts().get(record.node_id, 0),
        )

    @rpc_boundary
    async def UndrainNode(
        self, request: admin_pb2.UndrainNodeRequest, context: Context
    ) -> admin_pb2.UndrainNodeResponse:
        """Withdraw the node's drain request."""
        node_id = validate_id(request.node_id, field="node_id")
        if node_id not in self._router.nodes and not self._ownership.is_drain_requested(node_id):
            raise NotFound(
                f"node {node_id!r} is not alive in cluster {self._router.cluster} "
                "and has no drain request"
            )
        await cancel_drain(self._etcd, self._keys, node_id)
        _log.info("admin_drain_cancelled", node_id=node_id)
        return admin_pb2.UndrainNodeResponse(node_id=node_id)

    @rpc_boundary
    async def MigrateWorkspace(
        self, request: admin_pb2.MigrateWorkspaceRequest, context: Context
    ) -> admin_pb2.MigrateWorkspaceResponse:
        """Pin the workspace to an alive, active node; the owners hand it over."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        target = self._live_node(request.target_node_id, field="target_node_id")
        if not target.is_active or self._ownership.is_drain_requested(target.node_id):
            raise InvalidInput(f"node {target.node_id!r} is draining: pick an active node")
        try:
            previous_node_id = self._router.resolve(workspace_id).node_id
        except Unavailable:
            previous_node_id = ""
        await set_pin(self._etcd, self._keys, workspace_id, target.node_id)
        _log.info("admin_pin_set", workspace_id=workspace_id, node_id=target.node_id)
        return admin_pb2.MigrateWorkspaceResponse(
            workspace_id=workspace_id,
            slot=slot_of(workspace_id, self._slot_count),
            target_node_id=target.node_id,
            previous_node_id=previous_node_id,
        )

    @rpc_boundary
    async def UnpinWorkspace(
        self, request: admin_pb2.UnpinWorkspaceRequest, context: Context
    ) -> admin_pb2.UnpinWorkspaceResponse:
        """Remove the workspace's pin (nothing to do when it has none)."""
        workspace_id = validate_id(request.workspace_id, field="workspace_id")
        previous = self._ownership.pin_of(workspace_id) or ""
        await clear_pin(self._etcd, self._keys, workspace_id)
        _log.info("admin_pin_cleared", workspace_id=workspace_id, previous=previous)
        return admin_pb2.UnpinWorkspaceResponse(
            workspace_id=workspace_id, previous_pinned_node_id=previous
        )

    @rpc_boundary
    async def PlanRebalance(
        self, request: admin_pb2.PlanRebalanceRequest, context: Context
    ) -> admin_pb2.PlanRebalanceResponse:
        """Every owned slot that placement now gives another node, with what it carries.

        Only a report, even with ``dry_run`` false: the reconcilers make these moves by
        themselves, paced, so the gateway has nothing to push.
        """
        started_at = time.perf_counter()
        ring, nodes = self._router.ring, self._router.nodes
        planned: list[tuple[int, str, str]] = []
        for slot, owner in sorted(self._ownership.slot_owners().items()):
            target = place_slot(ring, nodes, slot)
            if target is not None and target != owner.node_id:
                planned.append((slot, owner.node_id, target))
        catalogs = await self._catalogs([slot for slot, _, _ in planned])
        moves = [
            admin_pb2.SlotMove(
                slot=slot,
                from_node_id=from_node_id,
                to_node_id=to_node_id,
                workspace_ids=sorted(catalog),
                session_count=sum(catalog.values()),
            )
            for (slot, from_node_id, to_node_id), catalog in zip(planned, catalogs, strict=True)
        ]
        _log.info(
            "admin_rebalance_planned",
            moves=len(moves),
            dry_run=request.dry_run,
            seconds=round(time.perf_counter() - started_at, 3),
        )
        return admin_pb2.PlanRebalanceResponse(
            moves=moves,
            slot_move_count=len(moves),
            workspace_count=sum(len(move.workspace_ids) for move in moves),
            session_count=sum(move.session_count for move in moves),
            dry_run=request.dry_run,
        )

    @rpc_boundary
    async def ListQuarantined(
        self, request: admin_pb2.ListQuarantinedRequest, context: Context
    ) -> admin_pb2.ListQuarantinedResponse:
        """Every quarantined session, from etcd (one range read)."""
        records = await quarantined(self._etcd, self._keys)
        return admin_pb2.ListQuarantinedResponse(
            sessions=[
                admin_pb2.QuarantinedSession(
                    workspace_id=record.workspace_id,
                    session_id=record.session_id,
                    node_id=record.node_id,
                    reason=record.reason,
                    since_unix=record.since_unix,
                )
                for record in records
            ]
        )

    @rpc_boundary
    async def CheckHealth(
        self, request: admin_pb2.CheckHealthRequest, context: Context
    ) -> admin_pb2.CheckHealthResponse:
        """Every live node: reachable (its health service, short timeout), load, utilisation."""
        records = sorted(self._router.nodes.values(), key=lambda node: node.node_id)
        answers = await asyncio.gather(*(health_of(self._router, record) for record in records))
        return admin_pb2.CheckHealthResponse(
            nodes=[
                admin_pb2.NodeHealth(
                    node_id=record.node_id,
                    address=record.address,
                    is_reachable=is_serving,
                    status=status,
                    sessions=record.load,
                    capacity=record.capacity,
                    utilisation=_share(record.load, record.capacity),
                )
                for record, (is_serving, status) in zip(records, answers, strict=True)
            ]
        )
