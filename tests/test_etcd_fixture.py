"""The etcd fixture starts a real etcd that aetcd can talk to."""

from __future__ import annotations

import aetcd


async def test_put_and_get_round_trip(etcd_url: str) -> None:
    host, port = etcd_url.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        await client.put(b"/fixture/probe", b"hello")
        got = await client.get(b"/fixture/probe")
        assert got is not None
        assert got.value == b"hello"
