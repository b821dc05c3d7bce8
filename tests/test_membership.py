"""Membership in etcd: nodes register under a lease, the watcher follows the live set."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aetcd
import pytest

from protos import session_pb2 as pb
from registry import (
    DRAINING,
    ClusterKeys,
    InvalidInput,
    MembershipWatcher,
    NodeRecord,
    NodeRegistration,
    Unavailable,
    connect_etcd,
    parse_endpoints,
)
from testkit import EtcdProcess, RunningNode, etcd_in, eventually, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_node(node_id: str, **changes: object) -> NodeRecord:
    record = NodeRecord(node_id=node_id, address=f"127.0.0.1:{free_port()}", capacity=100)
    return replace(record, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def watcher(etcd: aetcd.Client, keys: ClusterKeys) -> AsyncIterator[MembershipWatcher]:
    membership = MembershipWatcher(etcd, keys)
    await membership.start()
    yield membership
    await membership.stop()


class TestEndpoints:
    """Endpoint lists parse strictly and connecting fails clearly."""

    def test_parses_urls_and_bare_hosts(self) -> None:
        assert parse_endpoints("http://127.0.0.1:2379, host2:2380 ,host3") == [
            ("127.0.0.1", 2379),
            ("host2", 2380),
            ("host3", 2379),
        ]

    @pytest.mark.parametrize("value", ["", " , ", "https://127.0.0.1:2379", "http://:2379"])
    def test_rejects_unusable_lists(self, value: str) -> None:
        with pytest.raises(InvalidInput):
            parse_endpoints(value)

    async def test_unreachable_endpoints_raise_unavailable_naming_them(self) -> None:
        port = free_port()
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
            await connect_etcd(f"http://127.0.0.1:{port}", health_interval_seconds=0.5)

    async def test_skips_a_dead_endpoint_for_a_live_one(self, etcd_url: str) -> None:
        client = await connect_etcd(f"http://127.0.0.1:{free_port()},{etcd_url}")
        try:
            assert await client.put(b"/probe/skip", b"ok")
        finally:
            await client.close()


class TestRegistration:
    """A registered node is visible while its lease lives, and only then."""

    async def test_watcher_sees_two_nodes_and_their_updates(
        self, etcd: aetcd.Client, keys: ClusterKeys, watcher: MembershipWatcher
    ) -> None:
        first = NodeRegistration(etcd, keys, make_node("node-a"))
        second = NodeRegistration(etcd, keys, make_node("node-b"))
        await first.start()
        await second.start()
        try:
            nodes = await watcher.wait_until(lambda nodes: len(nodes) == 2, timeout_seconds=5)
            assert nodes == {"node-a": first.record, "node-b": second.record}
            assert first.lease_id != 0
            await first.update(replace(first.record, load=7, state=DRAINING))
            nodes = await watcher.wait_until(
                lambda nodes: nodes["node-a"].load == 7, timeout_seconds=5
            )
            assert not nodes["node-a"].is_active
        finally:
            await first.stop()
            await second.stop()

    async def test_stopped_node_is_gone_at_once(
        self, etcd: aetcd.Client, keys: ClusterKeys, watcher: MembershipWatcher
    ) -> None:
        registration = NodeRegistration(etcd, keys, make_node("node-a"), lease_ttl_seconds=30)
        await registration.start()
        await watcher.wait_until(lambda nodes: "node-a" in nodes, timeout_seconds=5)
        await registration.stop()
        # Well under the 30 s TTL: only a revoked lease explains it.
        await watcher.wait_until(lambda nodes: "node-a" not in nodes, timeout_seconds=2)
        assert await etcd.get(keys.node("node-a")) is None

    async def test_crashed_node_disappears_after_its_ttl(
        self, etcd_url: str, keys: ClusterKeys, watcher: MembershipWatcher
    ) -> None:
        script = (
            "import asyncio, sys\n"
            "from registry import ClusterKeys, NodeRecord, NodeRegistration, connect_etcd\n"
            "async def main():\n"
            "    client = await connect_etcd(sys.argv[1])\n"
            "    record = NodeRecord(node_id='node-crash', address='127.0.0.1:1', capacity=1)\n"
            "    await NodeRegistration(client, ClusterKeys(sys.argv[2]), record,"
            " lease_ttl_seconds=2).start()\n"
            "    await asyncio.Event().wait()\n"
            "asyncio.run(main())\n"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, etcd_url, keys.cluster, cwd=REPO_ROOT
        )
        try:
            await watcher.wait_until(lambda nodes: "node-crash" in nodes, timeout_seconds=15)
        finally:
            process.kill()
            await process.wait()
        killed_at = time.monotonic()
        await watcher.wait_until(lambda nodes: "node-crash" not in nodes, timeout_seconds=5)
        # The record outlives the process by the lease's remaining TTL (more than 2 s / 3).
        assert time.monotonic() - killed_at >= 0.5

    async def test_stop_that_comes_as_a_refresh_completes_ends_the_keepalive(
        self, etcd: aetcd.Client, keys: ClusterKeys
    ) -> None:
        # The CI hang of 2026-11-29: a stop whose cancel reached the keepalive while a refresh
        # had just completed was swallowed (asyncio.wait_for on Python 3.11), the keepalive ran
        # on and stop() waited for it forever.
        stops: list[asyncio.Task[None]] = []

        class StoppedAsRefreshCompletes(NodeRegistration):
            async def _refresh(self) -> bool:
                is_alive = await super()._refresh()
                if not stops:  # the stop starts right after this refresh's answer came in
                    loop = asyncio.get_running_loop()
                    loop.call_soon(lambda: stops.append(asyncio.ensure_future(self.stop())))
                return is_alive

        registration = StoppedAsRefreshCompletes(
            etcd, keys, make_node("node-a"), lease_ttl_seconds=2
        )
        await registration.start()
        await eventually(lambda: bool(stops), message="a refresh, then the stop")
        async with asyncio.timeout(5):
            await stops[0]
        assert await etcd.get(keys.node("node-a")) is None

    async def test_lost_lease_is_reported_and_the_node_comes_back(
        self, etcd: aetcd.Client, keys: ClusterKeys, watcher: MembershipWatcher
    ) -> None:
        events: list[str] = []

        def lease_changed() -> None:
            has_lease, lease_id = registration.has_lease, registration.lease_id
            events.append(f"regained {lease_id}" if has_lease else "lost")

        registration = NodeRegistration(
            etcd, keys, make_node("node-a"), lease_ttl_seconds=2, on_lease_change=lease_changed
        )
        await registration.start()
        try:
            first_lease = registration.lease_id
            await etcd.revoke_lease(first_lease)
            await eventually(lambda: len(events) == 2, message="lease lost then regained")
            assert events == ["lost", f"regained {registration.lease_id}"]
            assert registration.lease_id != first_lease
            assert registration.has_lease
            stored = await eventually(lambda: etcd.get(keys.node("node-a")))
            assert stored.lease == registration.lease_id
            await watcher.wait_until(lambda nodes: "node-a" in nodes, timeout_seconds=5)
        finally:
            await registration.stop()


class TestPublishedLoad:
    """A node's record in etcd carries its load: the sessions it hosts."""

    async def test_published_load_follows_hosted_sessions(self, node: RunningNode) -> None:
        def published_load() -> int:
            record = node.server.ring.route("ws-1")
            return record.load if record is not None else -1

        await eventually(lambda: published_load() == 0, message="node registered")
        for workspace_id, session_id in (("ws-1", "s-1"), ("ws-2", "s-2")):
            await node.stub.CreateSession(
                pb.CreateSessionRequest(
                    workspace_id=workspace_id, session_id=session_id, phone_number="+14155550100"
                ),
                timeout=5,
            )
        await eventually(lambda: published_load() == 2, message="load 2 in etcd")


class TestWatcher:
    """The watcher's copy, its subscribers and its waits."""

    async def test_subscribers_get_the_current_set_and_every_change(
        self, etcd: aetcd.Client, keys: ClusterKeys, watcher: MembershipWatcher
    ) -> None:
        seen: list[set[str]] = []
        watcher.subscribe(lambda nodes: seen.append(set(nodes)))
        assert seen == [set()]
        registration = NodeRegistration(etcd, keys, make_node("node-a"))
        await registration.start()
        await eventually(lambda: seen[-1] == {"node-a"}, message="callback saw node-a")
        await registration.stop()
        await eventually(lambda: seen[-1] == set(), message="callback saw node-a leave")

    async def test_nodes_is_a_copy(self, watcher: MembershipWatcher) -> None:
        watcher.nodes()["intruder"] = make_node("intruder")
        assert watcher.nodes() == {}

    async def test_wait_until_times_out(self, watcher: MembershipWatcher) -> None:
        with pytest.raises(TimeoutError):
            await watcher.wait_until(lambda nodes: "never" in nodes, timeout_seconds=0.2)

    async def test_malformed_records_are_ignored(
        self, etcd: aetcd.Client, keys: ClusterKeys, watcher: MembershipWatcher
    ) -> None:
        await etcd.put(keys.node("broken"), b"{not json")
        registration = NodeRegistration(etcd, keys, make_node("node-a"))
        await registration.start()
        try:
            nodes = await watcher.wait_until(lambda nodes: "node-a" in nodes, timeout_seconds=5)
            assert "broken" not in nodes
        finally:
            await registration.stop()
            await etcd.delete(keys.node("broken"))


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """An etcd of this test's own, which the test may restart."""
    server = etcd_in(tmp_path)
    server.start_blocking()
    yield server
    server.stop_blocking()


class TestEtcdRestart:
    """After etcd restarts, registrations come back and watchers follow again."""

    async def test_registration_and_watch_survive_a_restart(
        self, private_etcd: EtcdProcess, keys: ClusterKeys
    ) -> None:
        url = private_etcd.url
        client = await connect_etcd(url)
        watcher = MembershipWatcher(client, keys)
        lost = asyncio.Event()
        registration = NodeRegistration(
            client,
            keys,
            make_node("node-a"),
            lease_ttl_seconds=2,
            on_lease_change=lambda: None if registration.has_lease else lost.set(),
        )
        late: NodeRegistration | None = None
        try:
            await registration.start()
            await watcher.start()
            await watcher.wait_until(lambda nodes: "node-a" in nodes, timeout_seconds=5)
            await private_etcd.stop()
            async with asyncio.timeout(10):
                await lost.wait()
            await private_etcd.start()  # the same ports and data
            await eventually(lambda: registration.has_lease, timeout_seconds=20)
            late = NodeRegistration(client, keys, make_node("node-b"))
            await late.start()
            # node-b exists only after the restart: seeing it proves the watch was re-established.
            await watcher.wait_until(
                lambda nodes: {"node-a", "node-b"} <= set(nodes), timeout_seconds=20
            )
        finally:
            if late is not None:
                await late.stop()
            await registration.stop()
            await watcher.stop()
            await client.close()
