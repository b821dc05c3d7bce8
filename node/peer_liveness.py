"""Whether a node that left the membership is gone for good — its process no longer there.

A node that leaves the membership has either died, or lost its lease while still running (an
operator revoked it, etcd lost it): the second one goes on running its sessions until its
next lease refresh tells it to stop. A restore must not start a session while a former
owner may still run it (one account, two live connections), yet waiting for a dead node only
lengthens a failover. So the restore asks here: a former owner whose address refuses
connections is gone (a killed process's sockets close with it), and its sessions can be
restored at once; one that still accepts them, or that this node never saw, may still be
running, and gets the let-go wait (:mod:`node.restore`).

One probe per node is shared by every restore that asks within ``CACHE_SECONDS``: a failover
restores hundreds of sessions of the same dead node together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from registry import InvalidInput, parse_host_port

PROBE_TIMEOUT_SECONDS = 0.25
"""A connection attempt that neither succeeds nor is refused within this long: not gone."""
CACHE_SECONDS = 0.5
"""How long one probe's answer is shared."""


class PeerLiveness:
    """Answers :meth:`is_gone` from membership and, for former members, a TCP probe."""

    def __init__(
        self,
        *,
        is_member: Callable[[str], bool],
        last_address: Callable[[str], str | None],
    ) -> None:
        self._is_member = is_member
        self._last_address = last_address
        self._probes: dict[str, tuple[float, asyncio.Task[bool]]] = {}

    async def is_gone(self, node_id: str) -> bool:
        """True only when ``node_id`` is not a member and its last address refuses
        connections; False while it is a member, or may still be running."""
        if self._is_member(node_id):
            return False
        address = self._last_address(node_id)
        if address is None:
            return False  # never seen here: nothing to probe, so it may still be running
        loop = asyncio.get_running_loop()
        cached = self._probes.get(node_id)
        if cached is None or loop.time() - cached[0] > CACHE_SECONDS:
            cached = (loop.time(), asyncio.create_task(_refuses_connections(address)))
            self._probes[node_id] = cached
        return await asyncio.shield(cached[1])


async def _refuses_connections(address: str) -> bool:
    try:
        host, port = parse_host_port(address, field="address", allow_port_zero=False)
    except InvalidInput:
        return False
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False  # unreachable or slow is not proof of death
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False
