"""etcd membership: a node registers under a lease; everyone watches the live set.

CONTRACT (filled in by the registry work; signatures are fixed, other packages use them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import aetcd

from registry.keys import ClusterKeys

ACTIVE = "active"
DRAINING = "draining"


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
    raise NotImplementedError


async def connect_etcd(endpoints: str) -> aetcd.Client:
    """A connected aetcd client for the first reachable endpoint (comma-separated URLs)."""
    raise NotImplementedError


class NodeRegistration:
    """A node's own membership: lease, record and keepalive."""

    def __init__(
        self,
        client: aetcd.Client,
        keys: ClusterKeys,
        record: NodeRecord,
        *,
        lease_ttl_seconds: int = 5,
        on_lease_lost: Callable[[], None] | None = None,
    ) -> None:
        raise NotImplementedError

    @property
    def record(self) -> NodeRecord:
        """The record as last published."""
        raise NotImplementedError

    @property
    def lease_id(self) -> int:
        """The id of the node's lease (0 before start)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Grant the lease, publish the record, start the keepalive loop."""
        raise NotImplementedError

    async def update(self, record: NodeRecord) -> None:
        """Publish a changed record (state, load) under the same lease."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop the keepalive and revoke the lease: the record disappears at once."""
        raise NotImplementedError


class MembershipWatcher:
    """A watch-fed copy of the live nodes; never an etcd read per lookup."""

    def __init__(self, client: aetcd.Client, keys: ClusterKeys) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Load the current members, then follow changes (resyncing after errors)."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop watching."""
        raise NotImplementedError

    def nodes(self) -> dict[str, NodeRecord]:
        """The live nodes now, by id (a copy)."""
        raise NotImplementedError

    def subscribe(self, callback: Callable[[dict[str, NodeRecord]], None]) -> None:
        """Call ``callback(nodes)`` now and after every change of the live set."""
        raise NotImplementedError
