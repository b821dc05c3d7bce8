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
from node.reconciler import CUT_MOVES_SECONDS, Reconciler
from node.shutdown import run_step
from node.slot_table import SlotTable
from node.storage import SessionStorage
from node.storage_health import StorageHealth
from node.webhooks.hub import WebhookHub
from registry import (
    MembershipWatcher,
    OwnershipView,
    RingTable,
    Unavailable,
    stop_task,
)
from registry.accounts import AccountStore
from registry.auth import (
    AccessControl,
)
from registry.webhooks import WebhookDirectory
from telemetry import HealthServicer

_log = structlog.get_logger(__name__)

LOAD_PUBLISH_INTERVAL_SECONDS = 1.0
"""The node record's ``load`` is republished at most this often, and only when it changed."""
DRAIN_SHARE = 0.5
"""Of the grace period, the share the handoffs get; the rest is for stopping what is left
(and for the process's own exit)."""
MOVES_SHARE = 0.6
"""By this share of the grace period, moves still running are cut short."""
SESSIONS_SHARE = 0.85
"""By this share, the sessions are stopped (state flushed) and calls in flight answered."""
QUICK_STEP_SECONDS = 0.5
"""The limit of a step that only closes something (each step is bounded)."""
MIN_STEP_SECONDS = 0.2
"""The least time a step of the shared budget gets, even past the grace period."""


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
    access: AccessControl
    webhooks: WebhookHub
    webhook_directory: WebhookDirectory


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
        """Drain and stop within ``grace_seconds``: mark draining, hand every slot off to
        the nodes placement picks (within ``DRAIN_SHARE`` of the grace; a handoff still
        running at ``MOVES_SHARE`` is cut short), stop taking calls, stop what is left (state
        flushed), flush the accounts DB, revoke the lease, close etcd. If the sessions did not
        all stop in time the lease is not revoked but left to expire, after this process is
        gone: a session still connected here must not meet its next owner. Safe to call
        twice."""
        async with self._stop_lock:
            if self._is_stopped:
                return
            self._is_stopped = True
            parts = self._parts
            loop = asyncio.get_running_loop()
            started = loop.time()
            _log.info("node_stopping", node_id=self.node_id, grace_seconds=grace_seconds)

            def until(share: float) -> float:
                return max(MIN_STEP_SECONDS, started + grace_seconds * share - loop.time())

            quick = QUICK_STEP_SECONDS
            await stop_task(self._load_task)
            await self._step("catalog", parts.catalog.counts.close(), quick)
            await parts.reconciler.drain_for_shutdown(timeout_seconds=until(DRAIN_SHARE))
            moves_limit = until(MOVES_SHARE)
            await self._step(
                "reconciler",
                parts.reconciler.stop(timeout_seconds=moves_limit),
                moves_limit + CUT_MOVES_SECONDS + quick,
            )
            await self._step("health", parts.health.enter_graceful_shutdown(), quick)
            # New calls are refused from here; calls in flight get until SESSIONS_SHARE to
            # finish, while the sessions stop (which also ends every WatchSession stream).
            server_stopped = asyncio.create_task(parts.server.stop(until(SESSIONS_SHARE)))
            sessions_stopped = await self._step(
                "sessions", parts.manager.stop_all(), until(SESSIONS_SHARE)
            )
            await self._step("grpc_server", server_stopped, quick)
            await self._step("lease_fence", parts.lease_fence.stop(), quick)
            if parts.accounts is not None:
                await self._step("accounts_db", parts.accounts.stop(), until(0.95))
            if sessions_stopped:
                await self._step("lease", parts.heartbeat.stop(), quick * 2)
            else:
                _log.error("node_lease_left_to_expire", node_id=self.node_id)
                parts.heartbeat.abandon()
            await self._step("ownership_view", parts.view.stop(), quick)
            await self._step("membership_watch", parts.membership.stop(), quick)
            await self._step("quarantine", parts.quarantine.stop(), quick)
            await self._step("webhooks", parts.webhooks.stop(), quick)
            await self._step("webhook_directory", parts.webhook_directory.stop(), quick)
            await self._step("tokens", parts.access.stop(), quick)
            await self._step("etcd", parts.etcd.close(), quick)
            await self._step("storage_health", parts.storage_health.stop(), quick)
            parts.storage.close()
            _log.info("node_stopped", node_id=self.node_id)

    async def _step(self, name: str, step: Awaitable[object], limit_seconds: float) -> bool:
        return await run_step(name, step, node_id=self.node_id, limit_seconds=limit_seconds)

    async def wait_for_termination(self) -> None:
        """Return when the gRPC server has stopped."""
        await self._parts.server.wait_for_termination()
