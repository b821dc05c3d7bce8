"""etcd membership: a node registers under a lease; everyone watches the live set.

A node's record lives at ``nodes/<node_id>`` bound to its lease, so it vanishes when the node
dies (the lease expires) or stops (the lease is revoked). :class:`NodeRegistration` keeps the
lease alive and comes back on its own after a lost lease; :class:`MembershipWatcher` keeps a
watch-fed copy of the live set and resyncs from a fresh read when the watch breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import aetcd

from registry.background import stop_task
from registry.errors import InvalidInput, Unavailable
from registry.keys import ClusterKeys

ACTIVE = "active"
DRAINING = "draining"
DEFAULT_ETCD_PORT = 2379

_log = logging.getLogger(__name__)

_RETRY_FIRST_SECONDS = 0.1
_RETRY_MAX_SECONDS = 2.0


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


def parse_endpoints(value: str) -> list[tuple[str, int]]:
    """``"http://127.0.0.1:2379,host2:2379"`` → ``[("127.0.0.1", 2379), ("host2", 2379)]``."""
    endpoints: list[tuple[str, int]] = []
    for item in value.split(","):
        text = item.strip()
        if not text:
            continue
        parts = urlsplit(text if "://" in text else f"//{text}")
        if parts.scheme not in ("", "http"):
            # aetcd 1.0 only opens plaintext channels; accepting https would silently downgrade.
            raise InvalidInput(f"etcd endpoint {text!r}: only http:// is supported")
        try:
            port = parts.port or DEFAULT_ETCD_PORT
        except ValueError as error:
            raise InvalidInput(f"etcd endpoint {text!r}: {error}") from error
        if not parts.hostname:
            raise InvalidInput(f"etcd endpoint {text!r} has no host")
        endpoints.append((parts.hostname, port))
    if not endpoints:
        raise InvalidInput("no etcd endpoint given (expected e.g. http://127.0.0.1:2379)")
    return endpoints


async def connect_etcd(endpoints: str, *, connect_timeout_seconds: float = 3.0) -> aetcd.Client:
    """A connected aetcd client for the first reachable endpoint (comma-separated URLs).

    Raises ``Unavailable`` naming every endpoint tried when none answers.
    """
    failures: list[str] = []
    for host, port in parse_endpoints(endpoints):
        client = aetcd.Client(host=host, port=port)
        try:
            # aetcd's connect() only builds a lazy channel; a real RPC proves the server is there.
            async with asyncio.timeout(connect_timeout_seconds):
                await client.status()
        except (aetcd.ClientError, TimeoutError) as error:
            failures.append(f"{host}:{port} ({type(error).__name__}: {error})")
            await client.close()
            continue
        return client
    raise Unavailable("no etcd endpoint is reachable: " + "; ".join(failures))


def _backoff(previous_seconds: float) -> float:
    return min(previous_seconds * 2, _RETRY_MAX_SECONDS)


def _call_safely(callback: Callable[..., None], *arguments: object) -> None:
    # A failing callback must not end the loop that keeps the node registered.
    try:
        callback(*arguments)
    except Exception:
        _log.exception("membership_callback_failed callback=%r", callback)


_REFRESH_RETRY_SECONDS = 0.2
"""Pause between keepalive retries while etcd does not answer."""


class NodeRegistration:
    """A node's own membership: lease, record and keepalive.

    The keepalive refreshes the lease every ``lease_ttl_seconds / 3``; a refresh that errors is
    retried on the same lease. When etcd says the lease is gone, or no refresh succeeded for a
    whole TTL, ``on_lease_lost`` runs (the node must fence itself: its owner keys were
    bound to that lease), then a new lease is granted and the record re-published until it
    works, and ``on_lease_regained(new_lease_id)`` runs.
    """

    def __init__(
        self,
        client: aetcd.Client,
        keys: ClusterKeys,
        record: NodeRecord,
        *,
        lease_ttl_seconds: int = 5,
        on_lease_lost: Callable[[], None] | None = None,
        on_lease_regained: Callable[[int], None] | None = None,
    ) -> None:
        if lease_ttl_seconds < 2:
            raise InvalidInput("lease_ttl_seconds must be at least 2 (etcd's minimum)")
        self._client = client
        self._keys = keys
        self._record = record
        self._lease_ttl_seconds = lease_ttl_seconds
        self._on_lease_lost = on_lease_lost
        self._on_lease_regained = on_lease_regained
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
        try:
            await self._grant_and_publish()
        except aetcd.ClientError as error:
            raise Unavailable(f"cannot register node {self._record.node_id}: {error}") from error
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
            try:
                await self._client.put(
                    self._keys.node(record.node_id), record.to_json(), lease=self._lease_id
                )
            except aetcd.ClientError as error:
                raise Unavailable(f"cannot publish node {record.node_id}: {error}") from error

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
                    "lease_revoke_failed node_id=%s lease_id=%s error=%r",
                    self._record.node_id,
                    self._lease_id,
                    error,
                )

    async def _grant_and_publish(self) -> None:
        async with self._publish_lock:
            lease = await self._client.lease(self._lease_ttl_seconds)
            await self._client.put(
                self._keys.node(self._record.node_id), self._record.to_json(), lease=lease.id
            )
            self._lease_id = int(lease.id)
            self._has_lease = True
            self._last_refreshed_at = asyncio.get_running_loop().time()

    async def _refresh(self) -> bool:
        """Whether the lease is still alive after one keepalive round trip."""
        reply = await self._client.refresh_lease(self._lease_id)
        # etcd answers a keepalive for an unknown (expired) lease with TTL 0, not an error.
        is_alive = reply is not None and int(reply.TTL) > 0
        if is_alive:
            self._last_refreshed_at = asyncio.get_running_loop().time()
        return is_alive

    async def _keep_alive(self) -> None:
        interval = self._refresh_interval_seconds
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
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
                        "lease_refresh_failed node_id=%s unconfirmed_seconds=%.2f error=%r",
                        self._record.node_id,
                        unconfirmed_seconds,
                        error,
                    )
                    if unconfirmed_seconds >= self._lease_ttl_seconds:
                        await self._recover()
                        break
                    await asyncio.sleep(min(_REFRESH_RETRY_SECONDS, interval))

    async def _recover(self) -> None:
        lost_lease_id = self._lease_id
        self._has_lease = False
        _log.error("lease_lost node_id=%s lease_id=%s", self._record.node_id, lost_lease_id)
        if self._on_lease_lost is not None:
            _call_safely(self._on_lease_lost)
        # If the old lease is in fact still alive, end it: its owner keys must not outlive the
        # fencing the node just did.
        with contextlib.suppress(aetcd.ClientError, TimeoutError):
            async with asyncio.timeout(self._refresh_interval_seconds):
                await self._client.revoke_lease(lost_lease_id)
        delay_seconds = _RETRY_FIRST_SECONDS
        while True:
            try:
                async with asyncio.timeout(self._lease_ttl_seconds):
                    await self._grant_and_publish()
            except (aetcd.ClientError, TimeoutError) as error:
                _log.warning(
                    "lease_regrant_failed node_id=%s error=%r", self._record.node_id, error
                )
                await asyncio.sleep(delay_seconds)
                delay_seconds = _backoff(delay_seconds)
                continue
            break
        _log.info("lease_regained node_id=%s lease_id=%s", self._record.node_id, self._lease_id)
        if self._on_lease_regained is not None:
            _call_safely(self._on_lease_regained, self._lease_id)


class MembershipWatcher:
    """A watch-fed copy of the live nodes; never an etcd read per lookup."""

    def __init__(self, client: aetcd.Client, keys: ClusterKeys) -> None:
        self._client = client
        self._keys = keys
        self._nodes: dict[str, NodeRecord] = {}
        self._subscribers: list[Callable[[dict[str, NodeRecord]], None]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the current members, then follow changes (resyncing after errors).

        Raises ``Unavailable`` if the first read fails.
        """
        try:
            revision = await self._load()
        except aetcd.ClientError as error:
            raise Unavailable(f"cannot read the members: {error}") from error
        self._task = asyncio.create_task(self._follow(revision), name="membership-watch")

    async def stop(self) -> None:
        """Stop watching."""
        await stop_task(self._task)
        self._task = None

    def nodes(self) -> dict[str, NodeRecord]:
        """The live nodes now, by id (a copy)."""
        return dict(self._nodes)

    def subscribe(self, callback: Callable[[dict[str, NodeRecord]], None]) -> None:
        """Call ``callback(nodes)`` now and after every change of the live set."""
        self._subscribers.append(callback)
        callback(self.nodes())

    def unsubscribe(self, callback: Callable[[dict[str, NodeRecord]], None]) -> None:
        """Stop calling ``callback``."""
        self._subscribers.remove(callback)

    async def wait_until(
        self,
        predicate: Callable[[dict[str, NodeRecord]], bool],
        *,
        timeout_seconds: float,
    ) -> dict[str, NodeRecord]:
        """Wait until ``predicate(nodes)`` holds and return those nodes.

        For example ``await watcher.wait_until(lambda nodes: len(nodes) == 2,
        timeout_seconds=10)``. Raises ``TimeoutError`` after the deadline.
        """
        async with asyncio.timeout(timeout_seconds):
            while True:
                changed = self._changed
                nodes = self.nodes()
                if predicate(nodes):
                    return nodes
                await changed.wait()

    def _replace(self, nodes: dict[str, NodeRecord]) -> None:
        if nodes == self._nodes:
            return
        self._nodes = nodes
        # A fresh event per change, so a waiter that saw the old state always wakes up.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for callback in list(self._subscribers):
            _call_safely(callback, self.nodes())

    def _parse(self, key: bytes, value: bytes) -> NodeRecord | None:
        try:
            return NodeRecord.from_json(value)
        except (ValueError, TypeError) as error:
            _log.warning("membership_record_invalid key=%r error=%r", key, error)
            return None

    async def _load(self) -> int:
        """Replace the copy with a fresh read; return the revision it reflects."""
        response = await self._client.get_prefix(self._keys.nodes_prefix)
        nodes: dict[str, NodeRecord] = {}
        for item in response:
            record = self._parse(item.key, item.value)
            if record is not None:
                nodes[self._keys.node_id_of(item.key)] = record
        self._replace(nodes)
        return int(response.header.revision)

    def _apply(self, event: Any) -> None:
        node_id = self._keys.node_id_of(event.kv.key)
        nodes = self.nodes()
        if event.kind == aetcd.EventKind.PUT:
            record = self._parse(event.kv.key, event.kv.value)
            if record is None:
                return
            nodes[node_id] = record
        else:
            nodes.pop(node_id, None)
        self._replace(nodes)

    async def _follow(self, revision: int) -> None:
        loop = asyncio.get_running_loop()
        delay_seconds = _RETRY_FIRST_SECONDS
        while True:
            started_at = loop.time()
            try:
                await self._watch_from(revision + 1)
            except Exception as error:
                # etcd restarted, the stream broke or the revision was compacted.
                _log.warning("membership_watch_broken error=%r", error)
            if loop.time() - started_at > _RETRY_MAX_SECONDS:
                # The watch was healthy for a while: this is a new outage, not the same one.
                delay_seconds = _RETRY_FIRST_SECONDS
            while True:
                await asyncio.sleep(delay_seconds)
                delay_seconds = _backoff(delay_seconds)
                try:
                    revision = await self._load()
                except aetcd.ClientError as error:
                    _log.warning("membership_resync_failed error=%r", error)
                    continue
                break

    async def _watch_from(self, start_revision: int) -> None:
        watch = await self._client.watch_prefix(
            self._keys.nodes_prefix, start_revision=start_revision
        )
        try:
            async for event in watch:
                self._apply(event)
        finally:
            await watch.cancel()
