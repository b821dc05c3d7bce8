"""A :class:`Router`: a resolver and a channel pool that follow one cluster's membership.

It is what the gateway forwards with and what the proxyless client calls with: resolve the
workspace's node, take the pooled channel to it, and on failure let :class:`routing.Attempts`
say where to go next.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from registry import MembershipWatcher, NodeRecord, OwnershipView, RingTable
from routing.channels import ChannelPool
from routing.resolver import Resolver
from routing.retry import DEFAULT_RETRY_POLICY, Attempts, RetryPolicy


class Router:
    """Routes workspaces to live nodes over pooled channels."""

    def __init__(
        self,
        membership: MembershipWatcher,
        ownership: OwnershipView,
        *,
        cluster: str,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.resolver = Resolver(membership, ownership, cluster=cluster)
        """workspace → node, from the watch-fed views."""
        self.channels = ChannelPool(credentials=credentials, options=channel_options)
        """One channel per node address."""
        self.retry_policy = retry_policy
        """How failed calls are retried."""

    @property
    def cluster(self) -> str:
        """The cluster this router serves."""
        return self.resolver.cluster

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """The live nodes by id, as last seen (do not mutate)."""
        return self.resolver.nodes

    @property
    def ring(self) -> RingTable:
        """The ring's slot table."""
        return self.resolver.ring

    @property
    def ownership(self) -> OwnershipView:
        """The watch-fed owners map."""
        return self.resolver.ownership

    def start(self) -> None:
        """Follow membership: rebuild the ring, close channels of nodes that left."""
        self.resolver.start(on_nodes=self._on_nodes)

    async def stop(self) -> None:
        """Stop following membership and close every channel."""
        self.resolver.stop()
        await self.channels.close()

    def resolve(self, workspace_id: str) -> NodeRecord:
        """The node that serves ``workspace_id`` now (``Unavailable`` when none can)."""
        return self.resolver.resolve(workspace_id)

    def attempts(
        self, workspace_id: str, *, address: str | None, deadline: float | None
    ) -> Attempts:
        """The retry state of one call to ``workspace_id`` that went to ``address``."""
        return Attempts(
            workspace_id=workspace_id,
            address=address,
            resolver=self.resolver,
            deadline=deadline,
            policy=self.retry_policy,
        )

    def _on_nodes(self, nodes: dict[str, NodeRecord]) -> None:
        self.channels.keep_only(node.address for node in nodes.values())
