"""One pooled ``grpc.aio`` channel per node address, and cached raw-bytes callables on it.

Channels open on first use and close when their node leaves the membership (calls still in
flight get a short grace) or the pool closes. grpc.aio ends a call on a channel closed under
it by raising ``CancelledError`` in the task that awaits it, as if that task had been
cancelled: :func:`closed_channels_as_errors` turns that into ``UNAVAILABLE``, so the retry
decision sends the call on to the node that serves the workspace now. Callables carry bytes
both ways: the gateway forwards what it received, the proxyless client serializes itself, so
one cache serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence

import grpc
import structlog

_log = structlog.get_logger(__name__)

DEPARTED_GRACE_SECONDS = 1.0
"""How long calls in flight on a departed node's channel may take before it closes."""

RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
"""A node restarts on the same address within seconds (a rolling restart): gRPC's own
reconnect backoff (1 s growing to 120 s) could leave its channel failing every call for
longer than a caller's deadline after the node is back; within a mesh, a try a second is
cheap."""

UnaryCaller = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
StreamCaller = grpc.aio.UnaryStreamMultiCallable[bytes, bytes]


def _identity(data: bytes) -> bytes:
    return data


def channel_closed_error(address: str) -> grpc.aio.AioRpcError:
    """The error a call on a channel closed under it stands for (retryable ``UNAVAILABLE``)."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"the channel to {address} closed under the call (its node left)",
        debug_error_string="",
    )


@contextlib.contextmanager
def closed_channels_as_errors(address: str) -> Iterator[None]:
    """Raise :func:`channel_closed_error` instead of the ``CancelledError`` grpc.aio raises in
    a task whose call's channel was closed; a cancel aimed at the task itself passes through."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise channel_closed_error(address) from None


class ChannelPool:
    """Channels by ``host:port`` (see the module docstring). No interceptors: hops trace
    themselves (:mod:`telemetry.hop`)."""

    def __init__(
        self,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, int]] = (),
    ) -> None:
        self._credentials = credentials
        """Mutual TLS to the nodes (``registry.tls``); None: plaintext."""
        self._options = [*RECONNECT_OPTIONS, *options]
        """Channel options (the largest request forwarded, ``registry.request_limits``)."""
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary_callers: dict[tuple[str, str], UnaryCaller] = {}
        self._stream_callers: dict[tuple[str, str], StreamCaller] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def channel_for(self, address: str) -> grpc.aio.Channel:
        """The pooled channel to ``address``, opened on first use."""
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            else:
                channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
            self._channels[address] = channel
        return channel

    def unary_caller(self, address: str, path: str) -> UnaryCaller:
        """A cached raw-bytes unary callable of method ``path`` on ``address``."""
        caller = self._unary_callers.get((address, path))
        if caller is None:
            caller = self.channel_for(address).unary_unary(
                path, request_serializer=_identity, response_deserializer=_identity
            )
            self._unary_callers[(address, path)] = caller
        return caller

    def stream_caller(self, address: str, path: str) -> StreamCaller:
        """A cached raw-bytes server-streaming callable of method ``path`` on ``address``."""
        caller = self._stream_callers.get((address, path))
        if caller is None:
            caller = self.channel_for(address).unary_stream(
                path, request_serializer=_identity, response_deserializer=_identity
            )
            self._stream_callers[(address, path)] = caller
        return caller

    def keep_only(self, live_addresses: Iterable[str]) -> None:
        """Close the channels to every address not in ``live_addresses`` (nodes that left)."""
        live = set(live_addresses)
        for address in [address for address in self._channels if address not in live]:
            channel = self._channels.pop(address)
            for callers in (self._unary_callers, self._stream_callers):
                for key in [key for key in callers if key[0] == address]:
                    del callers[key]
            _log.info("channel_closed", address=address, reason="node_left")
            # Called from membership callbacks, which cannot await: the close runs as a task
            # that close() waits for.
            task = asyncio.get_running_loop().create_task(self._close_departed(channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every channel."""
        channels, self._channels = self._channels, {}
        self._unary_callers.clear()
        self._stream_callers.clear()
        for channel in channels.values():
            await channel.close(None)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    @staticmethod
    async def _close_departed(channel: grpc.aio.Channel) -> None:
        with contextlib.suppress(Exception):
            await channel.close(grace=DEPARTED_GRACE_SECONDS)
