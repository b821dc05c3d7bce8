"""A running node, and its stop.

Stop (the SIGTERM path): mark the node ``draining``, hand every slot off, stop taking calls,
stop what is left gracefully (state flushed to storage), flush the accounts DB, revoke the
lease, close etcd. Every step is bounded and logged (:mod:`node.shutdown`), so a stop never
hangs on one part. :func:`node.startup.start_node` builds a node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, replace

import aetcd
import grpc
import structlog

from node.catalog import CatalogBook
from node.config import NodeConfig
from node.heartbeat import Heartbeat
from node.lease_fence import LeaseFence
from node.manager import SessionManager
from node.quarantine_book import QuarantineBook
from node.reconciler import Reconciler
from node.shutdown import run_step
from node.slot_table import SlotTable
from node.storage import SessionStorage
from node.storage_health import StorageHealth
from registry import (
    MembershipWatcher,
    OwnershipView,
    RingTable,
    Unavailable,
    stop_task,
)
from registry.accounts import AccountStore
from telemetry import HealthServicer

_log = structlog.get_logger(__name__)

LOAD_PUBLISH_INTERVAL_SECONDS = 1.0
"""The node record's ``load`` is republished at most this often, and only when it changed."""
STOP_STEP_MARGIN_SECONDS = 5.0
"""A stop step may take the grace period plus this before it is abandoned (and logged)."""


@dataclass(frozen=True)
class NodeParts:
    """The running parts of one node, as :func:`node.startup.start_node` wired them."""

    server: grpc.aio.Server
    health: HealthServicer
    etcd: aetcd.Client
    membership: MembershipWatcher
    ring: RingTable
    view: OwnershipView
    heartbeat: Heartbeat
    slots: SlotTable
    catalog: CatalogBook
    manager: SessionManager
    reconciler: Reconciler
    lease_fence: LeaseFence
    accounts: AccountStore | None
    storage: SessionStorage
    storage_health: StorageHealth
    quarantine: QuarantineBook


class NodeServer:
    """A running node. Stop it with ``stop()``; everything it opened is closed then."""

    def __init__(self, *, config: NodeConfig, address: str, parts: NodeParts) -> None:
        self._config = config
        self._address = address
        self._parts = parts
        self._load_task = asyncio.create_task(self._publish_load(), name="node-load")
        self._stop_lock = asyncio.Lock()
        self._is_stopped = False

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._config.node_id

    @property
    def address(self) -> str:
        """host:port others dial (the advertised address, with the bound port)."""
        return self._address

    @property
    def manager(self) -> SessionManager:
        """The sessions of this node."""
        return self._parts.manager

    @property
    def ring(self) -> RingTable:
        """This node's watch-fed ring table."""
        return self._parts.ring

    @property
    def heartbeat(self) -> Heartbeat:
        """This node's lease and membership record (kept alive on a thread of its own)."""
        return self._parts.heartbeat

    @property
    def slots(self) -> SlotTable:
        """The slots and pinned workspaces this node owns."""
        return self._parts.slots

    @property
    def ownership_view(self) -> OwnershipView:
        """This node's watch-fed copy of the owners map."""
        return self._parts.view

    @property
    def reconciler(self) -> Reconciler:
        """This node's reconciler."""
        return self._parts.reconciler

    async def flush_accounts(self) -> None:
        """Write what this node queued for the accounts DB now (tests, operators)."""
        if self._parts.accounts is not None:
            await self._parts.accounts.flush()

    async def _publish_load(self) -> None:
        heartbeat, manager = self._parts.heartbeat, self._parts.manager
        published = heartbeat.record.load
        while True:
            await asyncio.sleep(LOAD_PUBLISH_INTERVAL_SECONDS)
            load = manager.hosted_count
            if load == published:
                continue
            try:
                await heartbeat.update(replace(heartbeat.record, load=load))
            except Unavailable as error:
                _log.warning("node_load_publish_failed", node_id=self.node_id, error=error)
                continue
            published = load

    async def stop(self, *, grace_seconds: float = 5.0) -> None:
        """Drain and stop: mark draining, hand every slot off to the nodes placement picks
        (bounded by ``grace_seconds``), stop taking calls, stop what is left (state flushed),
        flush the accounts DB, revoke the lease, close etcd. Safe to call twice."""
        async with self._stop_lock:
            if self._is_stopped:
                return
            self._is_stopped = True
            parts = self._parts
            _log.info("node_stopping", node_id=self.node_id)
            await stop_task(self._load_task)
            limit = grace_seconds + STOP_STEP_MARGIN_SECONDS
            await self._step("catalog", parts.catalog.counts.close(), limit)
            await parts.reconciler.drain_for_shutdown(timeout_seconds=grace_seconds)
            await self._step("reconciler", parts.reconciler.stop(), limit)
            await self._step("health", parts.health.enter_graceful_shutdown(), limit)
            # New calls are refused from here; calls in flight get grace_seconds to finish,
            # while the sessions stop (which also ends every WatchSession stream).
            server_stopped = asyncio.create_task(parts.server.stop(grace_seconds))
            await self._step("sessions", parts.manager.stop_all(), limit)
            await self._step("grpc_server", server_stopped, limit)
            await self._step("lease_fence", parts.lease_fence.stop(), limit)
            if parts.accounts is not None:
                await self._step("accounts_db", parts.accounts.stop(), limit)
            await self._step("lease", parts.heartbeat.stop(), limit)
            await self._step("ownership_view", parts.view.stop(), limit)
            await self._step("membership_watch", parts.membership.stop(), limit)
            await self._step("quarantine", parts.quarantine.stop(), limit)
            await self._step("etcd", parts.etcd.close(), limit)
            await self._step("storage_health", parts.storage_health.stop(), limit)
            parts.storage.close()
            _log.info("node_stopped", node_id=self.node_id)

    async def _step(self, name: str, step: Awaitable[object], limit_seconds: float) -> None:
        await run_step(name, step, node_id=self.node_id, limit_seconds=limit_seconds)

    async def wait_for_termination(self) -> None:
        """Return when the gRPC server has stopped."""
        await self._parts.server.wait_for_termination()
