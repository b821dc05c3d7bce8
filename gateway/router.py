"""Which node serves a workspace, and one pooled channel per node.

The router follows membership through a :class:`MembershipWatcher` subscription into a
:class:`RoutingTable`, and the owners map through an :class:`OwnershipView`: routing is a few
dict lookups on watch-fed copies, never an etcd read. A pin wins, then the slot's owner, and
placement (ring + bounded loads) only for a slot nobody owns. Channels are opened on first use
and closed when their node leaves the membership (or the router stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from registry.errors import Unavailable
from registry.membership import MembershipWatcher, NodeRecord
from registry.ownership import OwnershipView
from registry.placement import resolve_node
from registry.routing import RoutingTable
from registry.slots import slot_of

_log = logging.getLogger(__name__)


def _identity(data: bytes) -> bytes:
    return data


class Router:
    """Routes workspaces to live nodes and pools a ``grpc.aio`` channel per node address."""

    def __init__(
        self,
        watcher: MembershipWatcher,
        *,
        cluster: str,
        ownership: OwnershipView | None = None,
    ) -> None:
        self._watcher = watcher
        self._cluster = cluster
        self._ownership = ownership
        self._routing = RoutingTable()
        self._nodes: dict[str, NodeRecord] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary_callers: dict[
            tuple[str, str], grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
        ] = {}
        self._stream_callers: dict[
            tuple[str, str], grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
        ] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._is_started = False

    @property
    def routing(self) -> RoutingTable:
        """The watch-fed routing table."""
        return self._routing

    @property
    def ownership(self) -> OwnershipView | None:
        """The watch-fed owners map (None: route by placement alone)."""
        return self._ownership

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """The live nodes by id, as last seen (do not mutate)."""
        return self._nodes

    @property
    def cluster(self) -> str:
        """The cluster this router serves."""
        return self._cluster

    def start(self) -> None:
        """Follow the watcher's live set (it is applied at once, then on every change)."""
        self._watcher.subscribe(self._on_members)
        self._is_started = True

    async def stop(self) -> None:
        """Stop following membership and close every channel."""
        if self._is_started:
            self._watcher.unsubscribe(self._on_members)
            self._is_started = False
        channels, self._channels = self._channels, {}
        self._unary_callers.clear()
        self._stream_callers.clear()
        for channel in channels.values():
            await channel.close(None)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def route(self, workspace_id: str) -> NodeRecord:
        """The node that serves ``workspace_id``: its pin (the pinned owner if held), else its
        slot's owner, else placement; ``Unavailable`` when no node can take it."""
        if self._ownership is not None:
            return resolve_node(
                workspace_id,
                routing=self._routing,
                nodes=self._nodes,
                ownership=self._ownership,
                cluster=self._cluster,
            )
        record = self._routing.node_for_slot(slot_of(workspace_id, self._routing.slot_count))
        if record is None:
            raise Unavailable(f"no node is alive in cluster {self._cluster}")
        return record

    def channel_for(self, address: str) -> grpc.aio.Channel:
        """The pooled channel to ``address`` (``host:port``), opened on first use.

        No interceptors: the forwarder traces the hop itself (:mod:`telemetry.hop`)."""
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
        return channel

    def unary_caller(
        self, address: str, path: str
    ) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """A cached raw-bytes unary callable of ``path`` on ``address``'s pooled channel."""
        caller = self._unary_callers.get((address, path))
        if caller is None:
            caller = self.channel_for(address).unary_unary(
                path, request_serializer=_identity, response_deserializer=_identity
            )
            self._unary_callers[(address, path)] = caller
        return caller

    def stream_caller(
        self, address: str, path: str
    ) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
        """A cached raw-bytes server-streaming callable of ``path`` on ``address``'s channel."""
        caller = self._stream_callers.get((address, path))
        if caller is None:
            caller = self.channel_for(address).unary_stream(
                path, request_serializer=_identity, response_deserializer=_identity
            )
            self._stream_callers[(address, path)] = caller
        return caller

    def _on_members(self, nodes: dict[str, NodeRecord]) -> None:
        self._routing.update(nodes)
        self._nodes = nodes
        live_addresses = {node.address for node in nodes.values()}
        for address in [address for address in self._channels if address not in live_addresses]:
            channel = self._channels.pop(address)
            self._forget_callers(address)
            _log.info("gateway_channel_closed address=%s reason=node_left", address)
            # A callback cannot await: the close runs as a task that stop() waits for.
            task = asyncio.get_running_loop().create_task(self._close(channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _forget_callers(self, address: str) -> None:
        for callers in (self._unary_callers, self._stream_callers):
            for key in [key for key in callers if key[0] == address]:
                del callers[key]

    @staticmethod
    async def _close(channel: grpc.aio.Channel) -> None:
        # Calls still in flight on a departed node get a short grace to finish.
        with contextlib.suppress(Exception):
            await channel.close(grace=1.0)
