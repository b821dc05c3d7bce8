"""The whatsmeow driver up to the network's edge: whatsmeow's own events (neonize protobufs)
mapped to the mesh's, real neonize clients on real stores on a machine with no route to
WhatsApp, and the fence stopping the driver before the lease could expire."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI") != "true":  # under CI the extra is installed: never skip there
    pytest.importorskip("node.drivers.whatsmeow_neonize")  # the whatsapp extra (neonize)

from node.drivers.base import DriverEvent, DriverEventKind
from node.drivers.whatsmeow import STOP_TIMEOUT_SECONDS, WhatsmeowDriver, WhatsmeowDriverFactory
from node.drivers.whatsmeow_events import (
    FIRST_QR_LIFETIME_SECONDS,
    NEXT_QR_LIFETIME_SECONDS,
    Next,
    map_event,
    normalize_phone_number,
    paired_credentials,
    qr_event,
    recipient_jid,
)
from node.drivers.whatsmeow_neonize import wa
from protos import session_pb2
from registry import Backoff, InvalidInput, Unavailable, connect_etcd
from simnet import SimNet
from testkit import eventually
from testkit.inprocess_mesh import LEASE_TTL_SECONDS, running_node

NOW = 1_700_000_000.0
QUICK = Backoff(initial_seconds=0.2, max_seconds=1.0, jitter=0.5)


def jid(user: str, server: str = "s.whatsapp.net") -> Any:
    return wa.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def mapped(event: Any, sent: dict[str, str] | None = None) -> tuple[list[DriverEvent], Next]:
    result = map_event(event, now_unix=NOW, client_message_id=(sent or {}).get)
    return list(result.events), result.next


class TestEventMapping:
    """Every whatsmeow event the mesh cares about, built as neonize builds it."""

    def test_connected_is_ready(self) -> None:
        events, next_step = mapped(wa.Connected(status=True))
        assert [e.kind for e in events] == [DriverEventKind.READY]
        assert next_step is Next.CONTINUE

    def test_qr_codes_rotate_with_their_expiry(self) -> None:
        first = qr_event("2@first", index=0, now_unix=NOW)
        later = qr_event("2@later", index=3, now_unix=NOW)
        assert (first.kind, first.qr_code) == (DriverEventKind.QR, "2@first")
        assert first.expire_at_unix == NOW + FIRST_QR_LIFETIME_SECONDS
        assert later.expire_at_unix == NOW + NEXT_QR_LIFETIME_SECONDS
        events, _ = mapped(wa.QR(Codes=["2@a", "2@b"]))
        assert [(e.kind, e.qr_code) for e in events] == [(DriverEventKind.QR, "2@a")]

    def test_pair_success_gives_credentials_naming_the_device(self) -> None:
        event = wa.PairStatus(ID=jid("4915123456789"), Status=wa.PairStatus.SUCCESS)
        events, next_step = mapped(event)
        assert [e.kind for e in events] == [DriverEventKind.PAIRED]
        assert events[0].credentials == {
            "driver": "whatsmeow",
            "jid": "4915123456789@s.whatsapp.net",
        }
        assert events[0].credentials == paired_credentials("4915123456789@s.whatsapp.net")
        assert next_step is Next.CONTINUE

    def test_pair_error_fails(self) -> None:
        events, next_step = mapped(wa.PairStatus(Status=wa.PairStatus.ERROR, Error="bad sig"))
        assert [(e.kind, "bad sig" in e.reason) for e in events] == [(DriverEventKind.FAILED, True)]
        assert next_step is Next.STAY_DOWN

    def test_logged_out_on_the_phone_forgets_the_device(self) -> None:
        events, next_step = mapped(wa.LoggedOut(OnConnect=False))
        assert [(e.kind, e.reason) for e in events] == [
            (DriverEventKind.DISCONNECTED, "logged_out")
        ]
        assert next_step is Next.FORGET_DEVICE

    def test_stream_replaced_stays_down(self) -> None:
        events, next_step = mapped(wa.StreamReplaced())
        assert [(e.kind, e.reason) for e in events] == [
            (DriverEventKind.DISCONNECTED, "connection_replaced")
        ]
        assert next_step is Next.STAY_DOWN

    @pytest.mark.parametrize(
        "event", [wa.Disconnected(status=True), wa.ConnectFailure(Message="503 unavailable")]
    )
    def test_temporary_loss_is_network_and_reconnects(self, event: Any) -> None:
        events, next_step = mapped(event)
        assert [(e.kind, e.reason) for e in events] == [(DriverEventKind.DISCONNECTED, "network")]
        assert next_step is Next.RECONNECT

    @pytest.mark.parametrize("event", [wa.TemporaryBan(Code=1, Expire=3600), wa.ClientOutdated()])
    def test_refusals_fail_without_reconnecting(self, event: Any) -> None:
        events, next_step = mapped(event)
        assert [e.kind for e in events] == [DriverEventKind.FAILED]
        assert next_step is Next.STAY_DOWN

    @pytest.mark.parametrize(
        ("receipt_type", "status"),
        [
            (wa.Receipt.DELIVERED, "DELIVERED"),
            (wa.Receipt.READ, "READ"),
            (wa.Receipt.PLAYED, "READ"),
        ],
    )
    def test_receipts_ack_the_mesh_ids(self, receipt_type: Any, status: str) -> None:
        receipt = wa.Receipt(MessageIDs=["3EB0AA", "3EB0BB", "unknown"], Type=receipt_type)
        events, _ = mapped(receipt, {"3EB0AA": "m-1", "3EB0BB": "m-2"})
        assert [(e.kind, e.message_id, e.status) for e in events] == [
            (DriverEventKind.ACK, "m-1", status),
            (DriverEventKind.ACK, "m-2", status),
        ]

    def test_receipts_of_our_own_devices_are_not_acks(self) -> None:
        receipt = wa.Receipt(MessageIDs=["3EB0AA"], Type=wa.Receipt.READ_SELF)
        assert mapped(receipt, {"3EB0AA": "m-1"})[0] == []

    def test_inbound_text(self) -> None:
        source = wa.MessageSource(Chat=jid("4917"), Sender=jid("4917"), IsFromMe=False)
        for body in ({"conversation": "hello"}, {"extendedTextMessage": {"text": "hello"}}):
            message = wa.Message(Info=wa.MessageInfo(MessageSource=source, ID="ABC"), Message=body)
            events, _ = mapped(message)
            assert [(e.kind, e.message_id, e.sender, e.text) for e in events] == [
                (DriverEventKind.INBOUND, "ABC", "4917@s.whatsapp.net", "hello")
            ]

    def test_own_echoes_and_media_are_not_inbound(self) -> None:
        mine = wa.MessageSource(Sender=jid("1"), IsFromMe=True)
        theirs = wa.MessageSource(Sender=jid("2"), IsFromMe=False)
        echo = wa.Message(Info=wa.MessageInfo(MessageSource=mine), Message={"conversation": "x"})
        media = wa.Message(Info=wa.MessageInfo(MessageSource=theirs), Message={})
        assert mapped(echo)[0] == [] and mapped(media)[0] == []

    def test_addresses(self) -> None:
        assert normalize_phone_number("+49 151-2345 6789") == "4915123456789"
        assert recipient_jid("+4915123456789").Server == "s.whatsapp.net"
        assert recipient_jid("1203630@g.us").Server == "g.us"
        for bad in ("", "12", "+49abc", "x@example.com", "1" * 16):
            with pytest.raises(InvalidInput):
                recipient_jid(bad)


class Recorder:
    def __init__(self) -> None:
        self.events: list[DriverEvent] = []

    def __call__(self, event: DriverEvent) -> None:
        self.events.append(event)

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events if e.kind is DriverEventKind.DISCONNECTED]


async def timed_stop(driver: WhatsmeowDriver, *, logout: bool) -> float:
    started = time.monotonic()
    await driver.stop(logout=logout)
    return time.monotonic() - started


class TestWithoutNetwork:
    """Real neonize clients and stores on disk, on a machine with no route to WhatsApp."""

    async def test_start_without_credentials_reports_network_and_backs_off(
        self, tmp_path: Path
    ) -> None:
        factory = WhatsmeowDriverFactory(tmp_path, backoff=QUICK, probe_address=None)
        driver = factory("ws-1", "s-1")
        recorder = Recorder()
        await driver.start(None, recorder)
        await eventually(lambda: recorder.reasons() == ["network"], message="network state")
        await asyncio.sleep(3)
        # One report per outage, attempts paced by the backoff (≤ 1 s apart after a few).
        assert recorder.reasons() == ["network"]
        assert 2 <= driver.connect_attempts <= 12, driver.connect_attempts
        assert driver.state in {"waiting_to_reconnect", "connecting"}
        assert driver.store_path == tmp_path / "workspace_ws-1" / "s-1" / "whatsmeow.sqlite3"
        assert driver.store_path.exists()
        with pytest.raises(Unavailable):
            await driver.send("m-1", "+4915123456789", "hi")
        with pytest.raises(Unavailable):
            await driver.request_pairing_code("+4915123456789")
        with pytest.raises(InvalidInput):
            await driver.request_pairing_code("not a number")
        assert await timed_stop(driver, logout=False) < STOP_TIMEOUT_SECONDS
        assert driver.store_path.exists()  # a plain stop keeps the pairing

    async def test_probe_keeps_reconnects_off_neonize_while_unreachable(
        self, tmp_path: Path
    ) -> None:
        factory = WhatsmeowDriverFactory(tmp_path, backoff=QUICK, probe_address=("127.0.0.1", 9))
        driver = factory("ws-1", "s-1")
        await driver.start(None, Recorder())
        await asyncio.sleep(3)
        assert driver.connect_attempts == 1  # the first attempt; then only probes
        assert 2 <= driver.probe_attempts <= 12, driver.probe_attempts
        assert await timed_stop(driver, logout=False) < STOP_TIMEOUT_SECONDS

    async def test_with_credentials_a_moved_session_finds_its_store(self, tmp_path: Path) -> None:
        credentials = paired_credentials("4915123456789@s.whatsapp.net")
        first = WhatsmeowDriverFactory(tmp_path, backoff=QUICK, probe_address=None)("ws", "s")
        await first.start(credentials, Recorder())
        await eventually(first.store_path.exists, message="store created")
        assert await timed_stop(first, logout=False) < STOP_TIMEOUT_SECONDS
        # Another node: its own factory on the same shared root.
        moved = WhatsmeowDriverFactory(tmp_path, backoff=QUICK, probe_address=None)("ws", "s")
        assert moved.store_path == first.store_path and moved.store_path.exists()
        recorder = Recorder()
        await moved.start(credentials, recorder)
        await eventually(lambda: recorder.reasons() == ["network"], message="network state")
        assert not [e for e in recorder.events if e.kind is DriverEventKind.QR]
        assert await timed_stop(moved, logout=True) < STOP_TIMEOUT_SECONDS
        assert not moved.store_path.exists()  # logout (offline: best effort) removes it

    async def test_delete_removes_the_store_and_a_second_stop_is_a_no_op(
        self, tmp_path: Path
    ) -> None:
        driver = WhatsmeowDriverFactory(tmp_path, backoff=QUICK, probe_address=None)("ws", "s")
        await driver.start(None, Recorder())
        await eventually(driver.store_path.exists, message="store created")
        assert await timed_stop(driver, logout=True) < STOP_TIMEOUT_SECONDS
        assert not driver.store_path.exists()
        assert await timed_stop(driver, logout=True) < 0.1

    def test_store_paths_stay_under_the_root(self, tmp_path: Path) -> None:
        factory = WhatsmeowDriverFactory(tmp_path)
        for ws, sid in (("..", "s"), ("ws", ".."), ("ws", "a/b"), ("ws", "")):
            with pytest.raises(InvalidInput):
                factory.store_path(ws, sid)


class RecordingFactory(WhatsmeowDriverFactory):
    def __init__(self, root: Path) -> None:
        super().__init__(root, backoff=QUICK, probe_address=None)
        self.drivers: list[WhatsmeowDriver] = []

    def __call__(self, workspace_id: str, session_id: str) -> WhatsmeowDriver:
        driver = super().__call__(workspace_id, session_id)
        self.drivers.append(driver)
        return driver


class TestFence:
    """A node whose lease is revoked stops its whatsmeow clients before the lease could expire."""

    async def test_revoked_lease_stops_the_driver_within_the_ttl(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        factory = RecordingFactory(tmp_path / "sessions")
        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet, driver_factory=factory
        ) as running:

            async def created() -> bool:
                request = session_pb2.CreateSessionRequest(workspace_id="ws-1", session_id="s-1")
                await running.stub.CreateSession(request, timeout=5)
                return True

            await eventually(created, timeout_seconds=20, message="session created")
            await eventually(lambda: factory.drivers, message="driver made")
            driver = factory.drivers[-1]
            await eventually(lambda: driver.connect_attempts >= 1, message="client connecting")

            client = await connect_etcd(etcd_url)
            try:
                revoked_at = time.monotonic()
                await client.revoke_lease(running.server.heartbeat.lease_id)
            finally:
                await client.close()

            def let_go() -> bool:
                link = driver._link
                return link is not None and link.is_closed and link.returned.is_set()

            await eventually(
                lambda: driver.state == "stopped" and let_go(),
                timeout_seconds=LEASE_TTL_SECONDS,
                message="driver stopped and its neonize client let go",
            )
            assert time.monotonic() - revoked_at < LEASE_TTL_SECONDS
