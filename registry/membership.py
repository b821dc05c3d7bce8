"""etcd membership: a node registers under a lease; everyone watches the live set.

A node's record lives at ``nodes/<node_id>`` bound to its lease, so it vanishes when the node
dies (the lease expires) or stops (the lease is revoked). :class:`NodeRegistration` keeps the
lease alive and comes back on its own after a lost lease; :class:`MembershipWatcher` keeps a
watch-fed copy of the live set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aetcd
import structlog

from registry.background import call_safely, stop_task
from registry.backoff import Backoff, Retries
from registry.errors import InvalidInput
from registry.etcd import etcd_errors
from registry.keys import ClusterKeys
from registry.mirror import WatchMirror

ACTIVE = "active"
DRAINING = "draining"

_log = structlog.get_logger(__name__)

REGRANT_BACKOFF = Backoff(initial_seconds=0.1, max_seconds=2.0)
"""Pause between attempts to grant a new lease after the old one was lost."""
REFRESH_RETRY_SECONDS = 0.2
"""Pause between keepalive retries while etcd does not answer."""


@dataclass(frozen=True)
class NodeRecord:
    """What a node publishes about itself under ``nodes/<node_id>``."""

    node_id: str
    address: str
    """host:port of the node's gRPC server, as other processes dial it."""
    capacity: int
    """MAX_SESSIONS_PER_INSTANCE: the most sessions it may host."""
    zone: str = ""
    state: str = ACTIVE
    """``active`` or ``draining``."""
    load: int = 0
    """Sessions it hosts now."""
    version: str = ""
    metrics_address: str = ""
    """host:port of its Prometheus endpoint, empty if none."""

    @property
    def is_active(self) -> bool:
        """Whether placement may give it new work."""
        return self.state == ACTIVE

    def to_json(self) -> bytes:
        """The record as stored in etcd."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> NodeRecord:
        """Parse a stored record, ignoring fields this version does not know."""
        raw = json.loads(data)
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        return cls(**known)


class NodeRegistration:
    """A node's own membership: lease, record and keepalive.

    The keepalive refreshes the lease every ``lease_ttl_seconds / 3``; a refresh that errors is
    retried on the same lease. When etcd says the lease is gone, or no refresh succeeded for a
    whole TTL, the lease counts as lost: ``has_lease`` turns False, then a new lease is granted
    and the record re-published until it works. ``on_lease_change()`` runs after each of
    those two changes; whether the node must fence itself is its listener's decision (the
    owner keys were bound to the lost lease).

    ``is_healthy()``, when given, is asked before every refresh: while it says False the
    lease is given up (revoked, so the node's keys go at once) and not taken again until it
    says True — a node that is wedged must not keep its work by heartbeating.

    ``last_refreshed_at`` is when the last refresh that etcd confirmed was *sent*: etcd keeps
    the lease at least a TTL from then, whenever the answer arrived.
    """

    def __init__(
        self,
        client: aetcd.Client,
        keys: ClusterKeys,
        record: NodeRecord,
        *,
        lease_ttl_seconds: int = 5,
        on_lease_change: Callable[[], None] | None = None,
        is_healthy: Callable[[], bool] | None = None,
    ) -> None:
        if lease_ttl_seconds < 2:
            raise InvalidInput("lease_ttl_seconds must be at least 2 (etcd's minimum)")
        self._client = client
        self._keys = keys
        self._record = record
        self._lease_ttl_seconds = lease_ttl_seconds
        self._on_lease_change = on_lease_change
        self._is_healthy = is_healthy
        self._lease_id = 0
        self._has_lease = False
        self._last_refreshed_at = 0.0
        self._publish_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def record(self) -> NodeRecord:
        """The record as last published."""
        return self._record

    @property
    def lease_id(self) -> int:
        """The id of the node's lease (0 before start)."""
        return self._lease_id

    @property
    def lease_ttl_seconds(self) -> int:
        """The TTL the lease is granted with."""
        return self._lease_ttl_seconds

    @property
    def has_lease(self) -> bool:
        """Whether the lease is believed alive (False between a loss and its re-grant)."""
        return self._has_lease

    @property
    def last_refreshed_at(self) -> float:
        """Event-loop time (``loop.time()``) the lease was last granted or refreshed; 0 before."""
        return self._last_refreshed_at

    @property
    def _refresh_interval_seconds(self) -> float:
        return self._lease_ttl_seconds / 3

    async def start(self) -> None:
        """Grant the lease, publish the record, start the keepalive loop."""
        with etcd_errors(f"register node {self._record.node_id}"):
            await self._grant_and_publish()
        self._task = asyncio.create_task(
            self._keep_alive(), name=f"lease-keepalive-{self._record.node_id}"
        )

    async def update(self, record: NodeRecord) -> None:
        """Publish a changed record (state, load) under the same lease.

        While the lease is lost the record is kept and published with the new lease.
        Raises ``Unavailable`` if etcd refuses the write.
        """
        if record.node_id != self._record.node_id:
            raise InvalidInput(f"cannot rename node {self._record.node_id} to {record.node_id}")
        async with self._publish_lock:
            self._record = record
            if not self._has_lease:
                return
            with etcd_errors(f"publish node {record.node_id}"):
                await self._client.put(
                    self._keys.node(record.node_id), record.to_json(), lease=self._lease_id
                )

    async def stop(self) -> None:
        """Stop the keepalive and revoke the lease: the record disappears at once."""
        await stop_task(self._task)
        self._task = None
        if self._lease_id and self._has_lease:
            self._has_lease = False
            try:
                async with asyncio.timeout(self._refresh_interval_seconds):
                    await self._client.revoke_lease(self._lease_id)
            except (aetcd.ClientError, TimeoutError) as error:
                # The lease expires on its own within the TTL; stopping must not fail.
                _log.warning(
                    "lease_revoke_failed",
                    node_id=self._record.node_id,
                    lease_id=self._lease_id,
                    error=error,
                )

    async def _grant_and_publish(self) -> None:
        async with self._publish_lock:
            sent_at = asyncio.get_running_loop().time()
            lease = await self._client.lease(self._lease_ttl_seconds)
            await self._client.put(
                self._keys.node(self._record.node_id), self._record.to_json(), lease=lease.id
            )
            self._lease_id = int(lease.id)
            self._has_lease = True
            self._last_refreshed_at = sent_at

    async def _refresh(self) -> bool:
        """Whether the lease is still alive after one keepalive round trip."""
        sent_at = asyncio.get_running_loop().time()
        reply = await self._client.refresh_lease(self._lease_id)
        # etcd answers a keepalive for an unknown (expired) lease with TTL 0, not an error.
        is_alive = reply is not None and int(reply.TTL) > 0
        if is_alive:
            self._last_refreshed_at = sent_at
        return is_alive

    async def _keep_alive(self) -> None:
        interval = self._refresh_interval_seconds
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if not self._healthy():
                await self._recover(event="lease_given_up")
                continue
            # A refresh that errors (etcd restarting, a network blip) says nothing about the
            # lease: etcd may still hold it. Retry the same lease quickly; give it up only when
            # etcd answers that it is gone (TTL 0) or a whole TTL passed unconfirmed.
            while True:
                try:
                    async with asyncio.timeout(interval):
                        is_alive = await self._refresh()
                    if not is_alive:
                        await self._recover()
                    break
                except (aetcd.ClientError, TimeoutError) as error:
                    unconfirmed_seconds = loop.time() - self._last_refreshed_at
                    _log.warning(
                        "lease_refresh_failed",
                        node_id=self._record.node_id,
                        unconfirmed_seconds=round(unconfirmed_seconds, 2),
                        error=error,
                    )
                    if unconfirmed_seconds >= self._lease_ttl_seconds:
                        await self._recover()
                        break
                    await asyncio.sleep(min(REFRESH_RETRY_SECONDS, interval))

    def _changed(self) -> None:
        if self._on_lease_change is not None:
            call_safely(self._on_lease_change)

    def _healthy(self) -> bool:
        return self._is_healthy is None or self._is_healthy()

    async def _recover(self, *, event: str = "lease_lost") -> None:
        """The lease is lost (or given up, ``event``): revoke it, wait until healthy, take a
        new one and publish the record under it."""
        lost_lease_id = self._lease_id
        self._has_lease = False
        _log.error(event, node_id=self._record.node_id, lease_id=lost_lease_id)
        self._changed()
        # If the old lease is in fact still alive, end it: its owner keys must not outlive the
        # fencing the node just did.
        with contextlib.suppress(aetcd.ClientError, TimeoutError):
            async with asyncio.timeout(self._refresh_interval_seconds):
                await self._client.revoke_lease(lost_lease_id)
        # Health is read off another thread's clock (the node's event loop): poll it.
        while not self._healthy():  # noqa: ASYNC110
            await asyncio.sleep(self._refresh_interval_seconds / 4)
        retries = Retries(REGRANT_BACKOFF)
        while True:
            try:
                async with asyncio.timeout(self._lease_ttl_seconds):
                    await self._grant_and_publish()
            except (aetcd.ClientError, TimeoutError) as error:
                _log.warning("lease_regrant_failed", node_id=self._record.node_id, error=error)
                await asyncio.sleep(retries.next_delay_seconds())
                continue
            break
        _log.info("lease_regained", node_id=self._record.node_id, lease_id=self._lease_id)
        self._changed()


class MembershipWatcher(WatchMirror[dict[str, NodeRecord]]):
    """A watch-fed copy of the live nodes; never an etcd read per lookup. Its snapshot is
    the live set by node id (a copy)."""

    def __init__(self, client: aetcd.Client, keys: ClusterKeys) -> None:
        super().__init__(client, watch_prefix=keys.nodes_prefix, name="membership")
        self._keys = keys
        self._nodes: dict[str, NodeRecord] = {}
        self._addresses: dict[str, str] = {}
        """The last address each node seen since this view started registered under."""

    def nodes(self) -> dict[str, NodeRecord]:
        """The live nodes now, by id (a copy)."""
        return dict(self._nodes)

    def last_address(self, node_id: str) -> str | None:
        """Where ``node_id`` last served, live or gone (None if this view never saw it)."""
        return self._addresses.get(node_id)

    def _remember(self, nodes: dict[str, NodeRecord]) -> None:
        for node_id, record in nodes.items():
            self._addresses[node_id] = record.address

    def snapshot(self) -> dict[str, NodeRecord]:
        """What subscribers and waiters get: :meth:`nodes`."""
        return self.nodes()

    def _parse(self, key: bytes, value: bytes) -> NodeRecord | None:
        try:
            return NodeRecord.from_json(value)
        except (ValueError, TypeError) as error:
            _log.warning("membership_record_invalid", key=key, error=error)
            return None

    async def _reload(self) -> tuple[int, bool]:
        response = await self._client.get_prefix(self._keys.nodes_prefix)
        nodes: dict[str, NodeRecord] = {}
        for item in response:
            record = self._parse(item.key, item.value)
            if record is not None:
                nodes[self._keys.node_id_of(item.key)] = record
        is_changed = nodes != self._nodes
        self._nodes = nodes
        self._remember(nodes)
        return int(response.header.revision), is_changed

    def _apply(self, event: Any) -> bool:
        node_id = self._keys.node_id_of(event.kv.key)
        nodes = dict(self._nodes)
        if event.kind == aetcd.EventKind.PUT:
            record = self._parse(event.kv.key, event.kv.value)
            if record is None:
                return False
            nodes[node_id] = record
            self._addresses[node_id] = record.address
        else:
            nodes.pop(node_id, None)
        if nodes == self._nodes:
            return False
        self._nodes = nodes
        return True
