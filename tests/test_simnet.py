"""simnet, the stand-in network: pairing, one live connection per account, delivery once,
acks, injection and the admin ops — over real sockets, as its clients see it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from simnet import SimNet, SimNetAdmin, SimNetAdminError, decode_line, encode_line
from simnet.__main__ import load_settings
from testkit import eventually

ACCOUNT = "ws-1/s-1"
EVENT_TIMEOUT_SECONDS = 5.0


class RawClient:
    """One protocol connection, speaking JSON lines directly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, **fields: Any) -> None:
        """Send one request line."""
        self.writer.write(encode_line(fields))
        await self.writer.drain()

    async def next_event(self) -> dict[str, Any]:
        """The next event line (fails if none comes within the deadline or the socket closes)."""
        async with asyncio.timeout(EVENT_TIMEOUT_SECONDS):
            line = await self.reader.readline()
        assert line, "connection closed"
        return decode_line(line)

    async def expect(self, event: str) -> dict[str, Any]:
        """The next event, which must be ``event``."""
        received = await self.next_event()
        assert received["ev"] == event, received
        return received

    async def expect_closed(self) -> None:
        """The server closes the connection (after at most the given trailing events)."""
        async with asyncio.timeout(EVENT_TIMEOUT_SECONDS):
            assert await self.reader.read() == b""

    async def close(self) -> None:
        """Close the socket."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


Connect = Callable[[SimNet], Awaitable[RawClient]]


@contextlib.asynccontextmanager
async def running(**config: int) -> AsyncIterator[SimNet]:
    """A SimNet on port 0, stopped afterwards."""
    net = SimNet(**config)
    await net.start()
    try:
        yield net
    finally:
        await net.stop()


@pytest.fixture
async def net() -> AsyncIterator[SimNet]:
    """A simnet whose phone scans every QR code after 20 ms."""
    async with running(pair_delay_ms=20, ack_delay_ms=2) as simnet:
        yield simnet


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens raw connections to a simnet; closes them all afterwards."""
    opened: list[RawClient] = []

    async def open_client(simnet: SimNet) -> RawClient:
        host, port = simnet.address.rsplit(":", 1)
        client = RawClient(*await asyncio.open_connection(host, int(port)))
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


async def paired_client(net: SimNet, connect: Connect) -> tuple[RawClient, str]:
    """A ready connection of ACCOUNT, paired through a QR code, and its token."""
    client = await connect(net)
    await client.request(op="connect", account=ACCOUNT, credentials=None)
    await client.expect("qr")
    token = (await client.expect("paired"))["credentials"]
    await client.expect("ready")
    return client, token


class TestPairing:
    """QR codes, pairing and credentials."""

    async def test_qr_then_automatic_pairing_then_ready(
        self, net: SimNet, connect: Connect
    ) -> None:
        client = await connect(net)
        await client.request(op="connect", account=ACCOUNT, credentials=None)
        qr = await client.expect("qr")
        assert qr["code"]
        assert qr["expire_at"] > time.time()
        paired = await client.expect("paired")
        assert isinstance(paired["credentials"], str) and paired["credentials"]
        await client.expect("ready")
        assert net.live_accounts() == {ACCOUNT}
        assert net.qr_issued(ACCOUNT) == 1

    async def test_qr_codes_rotate_until_paired_by_hand(self, connect: Connect) -> None:
        async with running(pair_delay_ms=-1, qr_rotate_ms=20) as net:
            client = await connect(net)
            await client.request(op="connect", account=ACCOUNT, credentials=None)
            codes = [await client.expect("qr") for _ in range(3)]
            assert len({qr["code"] for qr in codes}) == 3
            assert codes[0]["expire_at"] < codes[1]["expire_at"] < codes[2]["expire_at"]
            assert net.live_accounts() == set()
            assert net.pair("ws-1/other") is False
            assert net.pair(ACCOUNT) is True
            while (event := await client.next_event())["ev"] == "qr":
                pass
            assert event["ev"] == "paired"
            await client.expect("ready")
            assert net.live_accounts() == {ACCOUNT}

    async def test_stored_token_goes_straight_to_ready(self, net: SimNet, connect: Connect) -> None:
        first, token = await paired_client(net, connect)
        await first.close()
        await eventually(lambda: not net.live_accounts(), message="first connection gone")
        second = await connect(net)
        await second.request(op="connect", account=ACCOUNT, credentials=token)
        await second.expect("ready")
        assert net.qr_issued(ACCOUNT) == 1

    async def test_unknown_token_is_logged_out_and_may_pair_again(
        self, net: SimNet, connect: Connect
    ) -> None:
        client = await connect(net)
        await client.request(op="connect", account=ACCOUNT, credentials="forged")
        await client.expect("logged_out")
        await client.request(op="connect", account=ACCOUNT, credentials=None)
        await client.expect("qr")
        await client.expect("paired")
        await client.expect("ready")

    async def test_logout_forgets_the_credentials(self, net: SimNet, connect: Connect) -> None:
        client, token = await paired_client(net, connect)
        await client.request(op="logout")
        await client.expect_closed()
        assert net.live_accounts() == set()
        again = await connect(net)
        await again.request(op="connect", account=ACCOUNT, credentials=token)
        await again.expect("logged_out")


class TestOneLiveConnection:
    """A second live connection of an account kicks the first: "connection replaced"."""

    async def test_second_connection_replaces_the_first(
        self, net: SimNet, connect: Connect
    ) -> None:
        first, token = await paired_client(net, connect)
        second = await connect(net)
        await second.request(op="connect", account=ACCOUNT, credentials=token)
        await second.expect("ready")
        await first.expect("replaced")
        await first.expect_closed()
        assert [event.account for event in net.replaced_events] == [ACCOUNT]
        assert net.max_concurrent_live == {ACCOUNT: 1}
        intervals = net.live_intervals
        assert len(intervals) == 2
        assert intervals[0].ended_unix is not None
        assert intervals[1].ended_unix is None
        assert intervals[0].ended_unix <= intervals[1].started_unix
        assert net.live_accounts() == {ACCOUNT}

    async def test_closing_the_socket_ends_the_live_interval(
        self, net: SimNet, connect: Connect
    ) -> None:
        client, _ = await paired_client(net, connect)
        await client.close()
        await eventually(lambda: net.live_intervals[0].ended_unix is not None)
        assert net.live_accounts() == set()
        assert net.replaced_events == []


class TestSend:
    """Each message id is delivered once per account, with SENT → DELIVERED → READ acks."""

    async def test_send_is_delivered_once_with_three_acks(
        self, net: SimNet, connect: Connect
    ) -> None:
        client, _ = await paired_client(net, connect)
        await client.request(op="send", id="m-1", to="+15550001", text="hello")
        statuses = [(await client.expect("ack"))["status"] for _ in range(3)]
        assert statuses == ["SENT", "DELIVERED", "READ"]
        [delivery] = net.deliveries
        assert (delivery.account, delivery.message_id, delivery.to, delivery.text) == (
            ACCOUNT,
            "m-1",
            "+15550001",
            "hello",
        )

    async def test_resend_is_acked_but_not_delivered_again(
        self, net: SimNet, connect: Connect
    ) -> None:
        client, _ = await paired_client(net, connect)
        await client.request(op="send", id="m-1", to="+1", text="hi")
        while (await client.expect("ack"))["status"] != "READ":
            pass
        await client.request(op="send", id="m-1", to="+1", text="hi")
        assert (await client.expect("ack"))["status"] == "READ"
        assert net.delivered_ids(ACCOUNT) == {"m-1": 1}
        assert net.resend_count == 1

    async def test_send_before_ready_is_refused(self, connect: Connect) -> None:
        async with running(pair_delay_ms=-1) as net:
            client = await connect(net)
            await client.request(op="send", id="m-1", to="+1", text="hi")
            assert await client.expect("error") == {
                "ev": "error",
                "id": "m-1",
                "reason": "not_ready",
            }
            await client.request(op="connect", account=ACCOUNT, credentials=None)
            await client.expect("qr")
            await client.request(op="send", id="m-2", to="+1", text="hi")
            assert (await client.expect("error"))["reason"] == "not_ready"
            assert net.deliveries == []


class TestInjection:
    """Tests push inbound messages and cut connections."""

    async def test_push_inbound_reaches_the_live_connection(
        self, net: SimNet, connect: Connect
    ) -> None:
        client, _ = await paired_client(net, connect)
        message_id = await net.push_inbound(ACCOUNT, "+15550002", "ping")
        inbound = await client.expect("inbound")
        assert inbound == {"ev": "inbound", "id": message_id, "from": "+15550002", "text": "ping"}
        with pytest.raises(LookupError):
            await net.push_inbound("ws-1/nobody", "+1", "lost")

    async def test_drop_cuts_the_live_connection(self, net: SimNet, connect: Connect) -> None:
        client, _ = await paired_client(net, connect)
        assert await net.drop(ACCOUNT) is True
        with contextlib.suppress(ConnectionError):  # an abort may surface as a reset
            await client.expect_closed()
        assert net.live_accounts() == set()
        assert net.live_intervals[0].ended_unix is not None
        assert await net.drop(ACCOUNT) is False


class TestAdminOps:
    """Stats, push and drop over the socket, for a simnet in another process."""

    async def test_stats_push_and_drop_over_the_socket(self, net: SimNet, connect: Connect) -> None:
        client, _ = await paired_client(net, connect)
        await client.request(op="send", id="m-1", to="+1", text="hi")
        await client.expect("ack")
        await client.request(op="send", id="m-1", to="+1", text="hi")
        await client.expect("ack")
        async with SimNetAdmin(net.address) as admin:
            stats = await admin.stats()
            assert stats["deliveries"] == 1
            assert stats["duplicate_deliveries"] == 0
            assert stats["resends"] == 1
            assert stats["replaced"] == 0
            assert stats["max_concurrent_live"] == 1
            assert stats["live_accounts"] == 1
            account = stats["accounts"][ACCOUNT]
            assert account["delivered_ids"] == ["m-1"]
            assert (account["delivered"], account["resends"], account["qr_issued"]) == (1, 1, 1)
            assert (
                "delivered_ids" not in (await admin.stats(include_ids=False))["accounts"][ACCOUNT]
            )

            message_id = await admin.push(ACCOUNT, "+2", "pong")
            while (event := await client.next_event())["ev"] != "inbound":
                pass
            assert event["id"] == message_id
            assert await admin.drop(ACCOUNT) is True
            assert net.live_accounts() == set()
            with pytest.raises(SimNetAdminError, match="not_live"):
                await admin.push(ACCOUNT, "+2", "nobody home")

    async def test_bad_lines_get_an_error_not_a_disconnect(
        self, net: SimNet, connect: Connect
    ) -> None:
        client = await connect(net)
        client.writer.write(b"not json\n[1, 2]\n")
        await client.request(op="fly")
        for _ in range(3):
            assert (await client.expect("error"))["reason"] == "bad_request"
        await client.request(op="stats", include_ids=False)
        assert (await client.expect("stats"))["deliveries"] == 0


class TestProcess:
    """``python -m simnet`` as operators run it."""

    def test_flags_win_over_the_environment(self) -> None:
        environ = {"SIMNET_LISTEN": "127.0.0.1:7200", "SIMNET_PAIR_DELAY_MS": "-1"}
        from_env = load_settings([], environ)
        assert (from_env.listen_host, from_env.listen_port, from_env.pair_delay_ms) == (
            "127.0.0.1",
            7200,
            -1,
        )
        from_flags = load_settings(["--listen", "0.0.0.0:7300", "--pair-delay-ms", "5"], environ)
        assert (from_flags.listen_host, from_flags.listen_port, from_flags.pair_delay_ms) == (
            "0.0.0.0",
            7300,
            5,
        )
        assert load_settings([], {}).listen_port == 7100
        with pytest.raises(SystemExit):
            load_settings(["--listen", "nowhere"], {})

    async def test_process_serves_and_stops_on_sigterm(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simnet",
            "--listen",
            "127.0.0.1:0",
            "--pair-delay-ms",
            "10",
            stderr=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "SIMNET_PAIR_DELAY_MS": "nonsense-but-overridden",
                "LOG_FORMAT": "json",
            },
        )
        try:
            assert process.stderr is not None
            async with asyncio.timeout(20):
                first = json.loads(await process.stderr.readline())
            assert first["event"] == "simnet_listening", first
            address = first["address"]
            assert address.startswith("127.0.0.1:"), first
            async with SimNetAdmin(address) as admin:
                assert (await admin.stats())["deliveries"] == 0
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                _, rest = await process.communicate()
            assert process.returncode == 0, rest.decode()
            events = [json.loads(line)["event"] for line in rest.decode().splitlines()]
            assert events[-1] == "simnet_exited", events
        finally:
            if process.returncode is None:
                process.kill()
                await process.communicate()
