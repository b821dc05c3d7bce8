"""A former owner counts as gone only when it is not a member and its address refuses
connections: a restore waits for anything less (it may still run the session)."""

from __future__ import annotations

import asyncio
import socket

from node.peer_liveness import PeerLiveness
from testkit import HOST, eventually, free_port


def _liveness(members: set[str], addresses: dict[str, str]) -> PeerLiveness:
    return PeerLiveness(is_member=members.__contains__, last_address=addresses.get)


class TestIsGone:
    async def test_a_member_is_never_gone(self) -> None:
        closed = f"{HOST}:{free_port()}"
        assert not await _liveness({"node-1"}, {"node-1": closed}).is_gone("node-1")

    async def test_a_former_member_whose_port_refuses_is_gone(self) -> None:
        closed = f"{HOST}:{free_port()}"  # nothing listens there
        assert await _liveness(set(), {"node-1": closed}).is_gone("node-1")

    async def test_a_former_member_still_listening_may_still_run(self) -> None:
        server = await asyncio.start_server(lambda reader, writer: writer.close(), HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            assert not await _liveness(set(), {"node-1": f"{HOST}:{port}"}).is_gone("node-1")

    async def test_a_node_never_seen_is_not_assumed_gone(self) -> None:
        assert not await _liveness(set(), {}).is_gone("node-9")

    async def test_many_asking_at_once_share_one_probe(self) -> None:
        accepted = 0

        def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        server = await asyncio.start_server(count, HOST, 0, family=socket.AF_INET)
        port = server.sockets[0].getsockname()[1]
        liveness = _liveness(set(), {"node-1": f"{HOST}:{port}"})
        async with server:
            answers = await asyncio.gather(*(liveness.is_gone("node-1") for _ in range(50)))
            await eventually(lambda: accepted >= 1, timeout_seconds=5)
        assert answers == [False] * 50
        assert accepted == 1
