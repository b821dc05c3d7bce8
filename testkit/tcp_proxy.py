"""A TCP forwarder in front of a real server that a test can make fail the way networks do:
:meth:`TcpProxy.refuse` (nothing listens: connections are refused, open ones are cut),
:meth:`TcpProxy.blackhole` (connections are accepted and bytes taken, but nothing comes back,
as behind a partition or a wedged server) and :meth:`TcpProxy.resume`. A real network fault in
front of a real database, not a mock of it: what the client sees is what its driver does.

The proxy listens on a port picked below the ephemeral range (:func:`testkit.free_port`), so it
can stop listening and listen again on the same port while the client keeps its address.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from testkit.ports import HOST, free_port

_CHUNK_BYTES = 65536


class TcpProxy:
    """Forwards ``HOST:port`` to ``target_host:target_port`` (see the module docstring)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._connections: set[asyncio.Task[None]] = set()
        self.accepted = 0
        """Connections accepted so far."""

    @property
    def address(self) -> str:
        """``host:port`` to give the client instead of the server's."""
        return f"{HOST}:{self.port}"

    async def start(self) -> None:
        """Listen and forward."""
        await self._listen()

    async def refuse(self) -> None:
        """Stop listening and cut every open connection: connects are refused from now on."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._cut_all()
        self._flowing.set()

    async def blackhole(self) -> None:
        """Keep accepting, but forward nothing either way: every call hangs until it times out
        or the proxy resumes (then what was held goes on, as after a healed partition)."""
        self._flowing.clear()
        await self._listen()

    async def resume(self) -> None:
        """Listen (again) and forward everything, held bytes first."""
        await self._listen()
        self._flowing.set()

    async def stop(self) -> None:
        """Stop listening and cut every connection."""
        await self.refuse()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, HOST, self.port, reuse_address=True
            )

    async def _cut_all(self) -> None:
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A task of our own, not the server's: cutting it must not look like its failure.
        task = asyncio.create_task(self._forward(reader, writer), name="tcp-proxy-connection")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        self.accepted += 1

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # a blackholed connect is accepted, then never answered
            try:
                upstream_reader, upstream = await asyncio.open_connection(*self._target)
            except OSError:
                return
            await asyncio.gather(self._pump(reader, upstream), self._pump(upstream_reader, writer))
        except asyncio.CancelledError:
            writer.transport.abort()  # cut: the client sees a reset, not a clean end
            if upstream is not None:
                upstream.transport.abort()
            raise
        finally:
            for each in (writer, upstream):
                if each is not None:
                    each.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await self._flowing.wait()
                data = await source.read(_CHUNK_BYTES)
                if not data:
                    break
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()


@asynccontextmanager
async def running_tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    """A started :class:`TcpProxy` to the target, stopped afterwards."""
    proxy = TcpProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
