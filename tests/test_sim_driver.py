"""The sim driver against a real simnet: pairing, restore without QR, acks, reconnects,
"connection replaced" without fighting back, logout, and refusing sends while down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from node.drivers import Driver, DriverEvent, DriverEventKind, SimDriver, SimDriverFactory
from registry import InvalidInput, Unavailable
from simnet import SimNet
from testkit import eventually, free_port

ACCOUNT = "ws-1/s-1"
QR, PAIRED, READY = DriverEventKind.QR, DriverEventKind.PAIRED, DriverEventKind.READY
DISCONNECTED, ACK, INBOUND = (
    DriverEventKind.DISCONNECTED,
    DriverEventKind.ACK,
    DriverEventKind.INBOUND,
)


class Recorder:
    """Collects a driver's events."""

    def __init__(self) -> None:
        self.events: list[DriverEvent] = []

    def __call__(self, event: DriverEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[DriverEventKind]:
        """The kinds, in order."""
        return [event.kind for event in self.events]

    def has(self, kind: DriverEventKind, **fields: Any) -> bool:
        """Whether an event of ``kind`` with these field values arrived."""
        return any(
            event.kind is kind and all(getattr(event, k) == v for k, v in fields.items())
            for event in self.events
        )

    def credentials(self) -> dict[str, Any]:
        """The credentials of the last PAIRED event."""
        return [e.credentials for e in self.events if e.kind is PAIRED][-1]


@pytest.fixture
async def net() -> AsyncIterator[SimNet]:
    """A simnet whose phone scans every QR code after 20 ms."""
    simnet = SimNet(pair_delay_ms=20, ack_delay_ms=2)
    await simnet.start()
    try:
        yield simnet
    finally:
        await simnet.stop()


MakeDriver = Callable[[SimNet], SimDriver]


@pytest.fixture
async def make_driver() -> AsyncIterator[MakeDriver]:
    """Makes drivers for ACCOUNT with a short backoff; stops them all afterwards."""
    made: list[SimDriver] = []

    def make(simnet: SimNet) -> SimDriver:
        driver = SimDriverFactory(simnet_address=simnet.address, reconnect_backoff_ms=10)(
            "ws-1", "s-1"
        )
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.stop(logout=False)


async def paired_driver(net: SimNet, make_driver: MakeDriver) -> tuple[SimDriver, Recorder]:
    """A READY driver, paired through a QR code."""
    driver, recorder = make_driver(net), Recorder()
    await driver.start(None, recorder)
    await eventually(lambda: recorder.has(READY), message="driver READY")
    return driver, recorder


class TestPairingAndRestore:
    """QR → PAIRED → READY once; stored credentials go straight to READY."""

    async def test_qr_then_paired_then_ready(self, net: SimNet, make_driver: MakeDriver) -> None:
        driver, recorder = await paired_driver(net, make_driver)
        assert recorder.kinds() == [QR, PAIRED, READY]
        qr = recorder.events[0]
        assert qr.qr_code and qr.expire_at_unix > 0
        assert isinstance(recorder.credentials()["token"], str)
        assert driver.is_ready
        assert net.live_accounts() == {ACCOUNT}

    async def test_restart_with_credentials_skips_the_qr(
        self, net: SimNet, make_driver: MakeDriver
    ) -> None:
        first, recorder = await paired_driver(net, make_driver)
        await first.stop(logout=False)
        await eventually(lambda: not net.live_accounts(), message="first connection closed")
        second, restored = make_driver(net), Recorder()
        await second.start(recorder.credentials(), restored)
        await eventually(lambda: restored.has(READY), message="restored READY")
        assert restored.kinds() == [READY]
        assert net.qr_issued(ACCOUNT) == 1
        assert net.replaced_events == []

    async def test_logout_makes_the_old_token_useless(
        self, net: SimNet, make_driver: MakeDriver
    ) -> None:
        first, recorder = await paired_driver(net, make_driver)
        old_credentials = recorder.credentials()
        await first.stop(logout=True)
        second, again = make_driver(net), Recorder()
        await second.start(old_credentials, again)
        await eventually(lambda: again.has(READY), message="re-paired READY")
        assert again.kinds() == [DISCONNECTED, QR, PAIRED, READY]
        assert again.events[0].reason == "logged_out"
        assert again.credentials() != old_credentials


class TestMessages:
    """Sends come back as ACK events; inbound messages as INBOUND events."""

    async def test_send_yields_sent_delivered_read(
        self, net: SimNet, make_driver: MakeDriver
    ) -> None:
        driver, recorder = await paired_driver(net, make_driver)
        await driver.send("m-1", "+15550001", "hello")
        await eventually(lambda: recorder.has(ACK, status="READ"), message="READ ack")
        acks = [(e.message_id, e.status) for e in recorder.events if e.kind is ACK]
        assert acks == [("m-1", "SENT"), ("m-1", "DELIVERED"), ("m-1", "READ")]
        assert net.delivered_ids(ACCOUNT) == {"m-1": 1}

    async def test_inbound_message_becomes_an_event(
        self, net: SimNet, make_driver: MakeDriver
    ) -> None:
        _, recorder = await paired_driver(net, make_driver)
        message_id = await net.push_inbound(ACCOUNT, "+15550002", "ping")
        await eventually(lambda: recorder.has(INBOUND), message="INBOUND event")
        assert recorder.events[-1] == DriverEvent(
            kind=INBOUND, message_id=message_id, sender="+15550002", text="ping"
        )

    async def test_send_while_not_connected_is_unavailable(self, make_driver: MakeDriver) -> None:
        pending = SimNet(pair_delay_ms=-1)
        await pending.start()
        try:
            driver, recorder = make_driver(pending), Recorder()
            await driver.start(None, recorder)
            await eventually(lambda: recorder.has(QR), message="QR shown")
            with pytest.raises(Unavailable, match="not connected"):
                await driver.send("m-1", "+1", "too early")
            assert pending.deliveries == []
        finally:
            await pending.stop()


class TestConnectionLoss:
    """Network blips reconnect; a replaced connection stays down."""

    async def test_drop_reconnects_to_ready(self, net: SimNet, make_driver: MakeDriver) -> None:
        driver, recorder = await paired_driver(net, make_driver)
        assert await net.drop(ACCOUNT)
        await eventually(lambda: recorder.kinds()[-2:] == [DISCONNECTED, READY], message="back")
        assert recorder.kinds() == [QR, PAIRED, READY, DISCONNECTED, READY]
        assert recorder.events[3].reason == "network"
        assert driver.is_ready
        assert net.qr_issued(ACCOUNT) == 1
        await driver.send("m-1", "+1", "after the blip")
        await eventually(lambda: net.delivered_ids(ACCOUNT)["m-1"] == 1)

    async def test_unreachable_simnet_reports_network_until_it_comes_up(
        self, make_driver: MakeDriver
    ) -> None:
        port = free_port()
        late = SimNet(pair_delay_ms=20)
        driver = SimDriver(
            workspace_id="ws-1",
            session_id="s-1",
            simnet_address=f"127.0.0.1:{port}",
            reconnect_backoff_ms=10,
        )
        recorder = Recorder()
        try:
            await driver.start(None, recorder)
            assert recorder.kinds() == [DISCONNECTED]
            assert recorder.events[0].reason == "network"
            with pytest.raises(Unavailable):
                await driver.send("m-1", "+1", "nobody there")
            await late.start(port=port)
            await eventually(lambda: recorder.has(READY), message="READY once simnet is up")
            assert recorder.kinds() == [DISCONNECTED, QR, PAIRED, READY]
        finally:
            await driver.stop(logout=False)
            await late.stop()

    async def test_replaced_driver_stays_down(self, net: SimNet, make_driver: MakeDriver) -> None:
        first, first_events = await paired_driver(net, make_driver)
        second, second_events = make_driver(net), Recorder()
        await second.start(first_events.credentials(), second_events)
        await eventually(lambda: second_events.has(READY), message="second READY")
        await eventually(
            lambda: first_events.has(DISCONNECTED, reason="connection_replaced"),
            message="first replaced",
        )
        # It does not fight back: its connection loop has ended, so nothing is left in it that
        # could reconnect (no waiting for something not to happen).
        await eventually(
            lambda: first._run_task is not None and first._run_task.done(),
            message="the replaced driver's connection loop ended",
        )
        # simnet, meanwhile, served the winner a message: the account's one connection is it.
        message_id = await net.push_inbound(ACCOUNT, "+15550002", "for the winner")
        await eventually(
            lambda: second_events.has(INBOUND, message_id=message_id), message="winner got it"
        )
        assert first_events.kinds() == [QR, PAIRED, READY, DISCONNECTED]
        assert not first.is_ready
        assert len(net.replaced_events) == 1
        assert len(net.live_intervals) == 2  # the first connection and the second, no third
        assert net.live_accounts() == {ACCOUNT}
        assert second.is_ready
        with pytest.raises(Unavailable):
            await first.send("m-1", "+1", "from the loser")


class TestStop:
    """After stop returns, the driver is silent and its connection gone."""

    async def test_no_event_after_stop(self, net: SimNet, make_driver: MakeDriver) -> None:
        driver, recorder = await paired_driver(net, make_driver)
        await driver.send("m-1", "+1", "hi")
        await driver.stop(logout=False)
        seen = len(recorder.events)
        await eventually(lambda: not net.live_accounts(), message="connection closed")
        assert len(recorder.events) == seen
        with pytest.raises(Unavailable):
            await driver.send("m-2", "+1", "after stop")
        await driver.stop(logout=False)  # twice is harmless

    def test_factory_makes_drivers_that_satisfy_the_interface(self) -> None:
        factory = SimDriverFactory(simnet_address="127.0.0.1:7100")
        driver: Driver = factory("ws-1", "s-1")
        assert isinstance(driver, SimDriver)
        with pytest.raises(InvalidInput):
            SimDriverFactory(simnet_address="no-port-here")
