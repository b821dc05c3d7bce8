"""The etcd client over a real 3-member cluster: a member that stops or goes silent is left for
another within a bounded time, every call ends within its deadline, and watches carry on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from registry import EtcdClient, MembershipWatcher, NodeRecord, parse_endpoints
from registry.keys import ClusterKeys
from testkit import EtcdCluster, eventually

CALL_TIMEOUT_SECONDS = 1.0
HEALTH_INTERVAL_SECONDS = 0.25
LEFT_WITHIN_SECONDS = 5.0
"""A generous bound for leaving a failed member: a health check (0.25 s, bounded by the same)
and a probe of the next member, on a loaded 2-core machine, plus an election when the
member left was the leader (about a second)."""


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    members = EtcdCluster(tmp_path / "etcd", size=3)
    await members.start()
    try:
        yield members
    finally:
        await members.stop(grace_seconds=5)


async def _client_on_first_member(cluster: EtcdCluster) -> EtcdClient:
    client = EtcdClient(
        parse_endpoints(cluster.endpoints),
        call_timeout_seconds=CALL_TIMEOUT_SECONDS,
        health_interval_seconds=HEALTH_INTERVAL_SECONDS,
        first=0,
    )
    assert await client.probe()
    client.start_health_checks()
    return client


async def _put_until_it_works(
    client: EtcdClient, key: bytes, value: bytes = b"v"
) -> tuple[float, float]:
    """Put ``key`` until a put succeeds; the seconds that took and the longest single call."""
    started = time.monotonic()
    longest = 0.0
    while time.monotonic() - started < LEFT_WITHIN_SECONDS * 2:
        call_started = time.monotonic()
        try:
            await client.put(key, value)
            return time.monotonic() - started, max(longest, time.monotonic() - call_started)
        except Exception:
            longest = max(longest, time.monotonic() - call_started)
            await asyncio.sleep(0.05)
    raise AssertionError(f"no put succeeded within {LEFT_WITHIN_SECONDS * 2} s")


class TestMemberFailover:
    """The client leaves a member that fails for one that answers with a leader."""

    async def test_a_stopped_member_is_left_for_another(self, cluster: EtcdCluster) -> None:
        client = await _client_on_first_member(cluster)
        try:
            first = cluster.member(1)
            assert client.endpoint == f"{first.host}:{first.client_port}"
            await cluster.stop_member(1)
            took, longest = await _put_until_it_works(client, b"/probe/stopped")
            assert took < LEFT_WITHIN_SECONDS, f"a put worked only after {took:.2f} s"
            assert longest <= CALL_TIMEOUT_SECONDS + 0.5, f"one call took {longest:.2f} s"
            assert client.endpoint != f"{first.host}:{first.client_port}"
        finally:
            await client.close()

    async def test_a_silent_member_bounds_every_call_and_is_left(
        self, cluster: EtcdCluster
    ) -> None:
        client = await _client_on_first_member(cluster)
        try:
            cluster.pause_member(1)  # SIGSTOP: the connection stays open and answers nothing
            took, longest = await _put_until_it_works(client, b"/probe/silent")
            assert took < LEFT_WITHIN_SECONDS, f"a put worked only after {took:.2f} s"
            assert longest <= CALL_TIMEOUT_SECONDS + 0.5, f"one call took {longest:.2f} s"
            assert await client.get(b"/probe/silent") is not None
        finally:
            cluster.resume_member(1)
            await client.close()

    async def test_watches_carry_on_across_the_move(self, cluster: EtcdCluster) -> None:
        client = await _client_on_first_member(cluster)
        keys = ClusterKeys("members-test")
        watcher = MembershipWatcher(client, keys)
        await watcher.start()
        writer = EtcdClient(
            parse_endpoints(cluster.member(2).url), call_timeout_seconds=CALL_TIMEOUT_SECONDS
        )
        try:
            cluster.pause_member(1)
            record = NodeRecord(node_id="node-x", address="127.0.0.1:1", capacity=1)
            # (If member 1 led, the others elect a leader first: the writer retries.)
            await _put_until_it_works(writer, keys.node("node-x"), record.to_json())
            # The watch stream on the silent member delivers nothing; the client moves, the
            # mirror resyncs on the new member and sees the put.
            await eventually(
                lambda: "node-x" in watcher.nodes(),
                timeout_seconds=LEFT_WITHIN_SECONDS * 2,
                message="the membership mirror saw a put made while its member was silent",
            )
        finally:
            cluster.resume_member(1)
            await watcher.stop()
            await writer.close()
            await client.close()

    async def test_a_cluster_without_quorum_fails_calls_in_time(self, cluster: EtcdCluster) -> None:
        client = await _client_on_first_member(cluster)
        try:
            await asyncio.gather(cluster.stop_member(2), cluster.stop_member(3))
            started = time.monotonic()
            with pytest.raises(Exception):  # noqa: B017 - any etcd error, but in time
                await client.put(b"/probe/no-quorum", b"v")
            assert time.monotonic() - started <= CALL_TIMEOUT_SECONDS + 0.5
            await asyncio.gather(cluster.start_member(2), cluster.start_member(3))
            took, _ = await _put_until_it_works(client, b"/probe/quorum-back")
            assert took < LEFT_WITHIN_SECONDS
        finally:
            await client.close()
