"""A client for simnet's admin requests, for tests and benchmarks that run it as a process."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from registry import parse_host_port
from simnet import protocol as p


class SimNetAdminError(Exception):
    """simnet refused an admin request (``reason`` says why) or closed the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SimNetAdmin:
    """One admin connection to a running simnet; use as ``async with SimNetAdmin(addr):``."""

    def __init__(self, address: str) -> None:
        self._host, self._port = parse_host_port(address, field="simnet address")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> SimNetAdmin:
        self._reader, self._writer = await asyncio.open_connection(
            self._host, self._port, limit=p.MAX_LINE_BYTES
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _request(self, request: dict[str, Any], expected_event: str) -> dict[str, Any]:
        if self._reader is None or self._writer is None:
            raise SimNetAdminError("not connected: use `async with SimNetAdmin(address)`")
        async with self._lock:  # one request in flight: answers come back in order
            self._writer.write(p.encode_line(request))
            await self._writer.drain()
            line = await self._reader.readline()
        if not line:
            raise SimNetAdminError("simnet closed the connection")
        answer = p.decode_line(line)
        if answer.get("ev") != expected_event:
            raise SimNetAdminError(str(answer.get("reason", answer)))
        return answer

    async def stats(self, *, include_ids: bool = True) -> dict[str, Any]:
        """simnet's :meth:`~simnet.SimNet.stats` (the ``ev`` key included)."""
        return await self._request({"op": p.OP_STATS, "include_ids": include_ids}, p.EV_STATS)

    async def push(self, account: str, sender: str, text: str) -> str:
        """Push an inbound message to ``account``'s live connection; its id."""
        request = {"op": p.OP_PUSH, "account": account, "from": sender, "text": text}
        answer = await self._request(request, p.EV_PUSHED)
        return str(answer["id"])

    async def drop(self, account: str) -> bool:
        """Cut ``account``'s live connection; whether there was one."""
        answer = await self._request({"op": p.OP_DROP, "account": account}, p.EV_DROPPED)
        return bool(answer["was_live"])
