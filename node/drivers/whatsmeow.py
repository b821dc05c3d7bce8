"""The ``whatsmeow`` driver: WhatsApp multi-device through neonize (whatsmeow in a Go library).

The device store (whatsmeow's SQLite file) lives in the session's own folder,
``<root>/workspace_<ws>/<sid>/whatsmeow.sqlite3``, so a session moved to another node connects
from it without a QR; the credentials the session persists only say that it holds a paired
device. Each connection attempt is one blocking ``Neonize`` call on its own daemon thread;
neonize calls back from Go threads and every callback is handed to the event loop. The
driver, not whatsmeow, decides when to reconnect: after a network loss with a capped,
jittered backoff (and only once the WhatsApp endpoint answers a TCP probe: each neonize
connection attempt keeps one SQLite handle open for the life of the process); after a stream
conflict ("connection replaced") never.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from node.drivers.base import DriverEvent, DriverEventKind, EventCallback
from node.drivers.whatsmeow_events import (
    DRIVER_NAME,
    Next,
    map_event,
    normalize_phone_number,
    qr_event,
    recipient_jid,
)
from node.drivers.whatsmeow_ids import IDS_FILE, MessageIdMap
from node.drivers.whatsmeow_link import Link, blocking_pool, remove_store
from node.drivers.whatsmeow_neonize import PairPhoneError, SendMessageError, wa
from registry import (
    Backoff,
    InvalidInput,
    Retries,
    Unavailable,
    WrongState,
    call_safely,
    validate_id,
)

_log = structlog.get_logger(__name__)
_T = TypeVar("_T")

STORE_FILE = "whatsmeow.sqlite3"
STOP_TIMEOUT_SECONDS = 4.0
"""A stop (logout included) returns within this, network or not (the session allows 5 s)."""
LOGOUT_TIMEOUT_SECONDS = 2.0
SEND_TIMEOUT_SECONDS = 30.0
PAIR_TIMEOUT_SECONDS = 20.0
PAIRING_CODE_LIFETIME_SECONDS = 180.0
PROBE_TIMEOUT_SECONDS = 5.0
QR_GRACE_SECONDS = 5.0
MAX_QR_ROUNDS = 3
"""Connections that show QR codes nobody scans before the session gives up (FAILED)."""
DEFAULT_BACKOFF = Backoff(initial_seconds=1.0, max_seconds=60.0, jitter=0.5)
WHATSAPP_ENDPOINT = ("web.whatsapp.com", 443)
_QR_EXPIRED = "no phone scanned the QR code"


class WhatsmeowDriver:
    """One session's WhatsApp connection (see :class:`node.drivers.base.Driver`)."""

    def __init__(
        self,
        *,
        workspace_id: str,
        session_id: str,
        store_path: Path,
        backoff: Backoff = DEFAULT_BACKOFF,
        probe_address: tuple[str, int] | None = WHATSAPP_ENDPOINT,
    ) -> None:
        self._account = f"{workspace_id}/{session_id}"
        self._store_path = store_path
        self._probe_address = probe_address
        self._reconnects = Retries(backoff)
        self._ids = MessageIdMap(store_path.with_name(IDS_FILE), executor=blocking_pool())
        self._on_event: EventCallback | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: Link | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._jid: str | None = None
        self._qr_rounds = 0
        self._is_ready = False
        self._is_down_reported = False
        self._is_stopped = False
        self.connect_attempts = 0
        """Connections tried (each one a neonize ``Neonize`` call)."""
        self.probe_attempts = 0
        """Reachability probes tried before a reconnect."""
        self.state = "new"
        """``connecting``, ``qr``, ``ready``, ``waiting_to_reconnect``, ``replaced``,
        ``failed`` or ``stopped``: what the connection is doing now."""

    @property
    def is_ready(self) -> bool:
        """Whether ``send`` would be accepted now."""
        return self._is_ready

    @property
    def store_path(self) -> Path:
        """The session's whatsmeow device store."""
        return self._store_path

    async def start(self, credentials: dict[str, Any] | None, on_event: EventCallback) -> None:
        """Connect from the device store (credentials) or towards a QR; returns at once."""
        if self._run_task is not None or self._is_stopped:
            raise RuntimeError("a WhatsmeowDriver starts once")
        self._loop = asyncio.get_running_loop()
        self._on_event = on_event
        if credentials and credentials.get("driver") == DRIVER_NAME:
            self._jid = str(credentials.get("jid") or "") or None
        await self._off_loop(self._store_path.parent.mkdir, 0o755, True, True)
        if self._jid and not await self._off_loop(self._store_path.exists):
            _log.warning("whatsmeow_store_missing", account=self._account, jid=self._jid)
        await self._ids.load()
        self._run_task = self._loop.create_task(self._run(), name=f"whatsmeow-{self._account}")

    async def send(self, message_id: str, to: str, text: str) -> None:
        """Hand a message to WhatsApp; a message sent already (by any owner) is acknowledged
        again instead. Raises ``Unavailable`` unless READY, ``InvalidInput`` for a bad ``to``."""
        if self._ids.wa_id_of(message_id) is not None:
            self._emit(DriverEvent(kind=DriverEventKind.ACK, message_id=message_id, status="SENT"))
            return
        link = self._link
        if not self._is_ready or link is None or link.ended.done():
            raise Unavailable("session is not connected")
        jid = recipient_jid(to)
        try:
            response = await self._call(SEND_TIMEOUT_SECONDS, link.client.send_message, jid, text)
        except (SendMessageError, TimeoutError) as error:
            raise Unavailable(f"WhatsApp did not take the message: {error}") from error
        await self._ids.record(message_id, str(response.ID))
        self._emit(DriverEvent(kind=DriverEventKind.ACK, message_id=message_id, status="SENT"))

    async def request_pairing_code(self, phone_number: str) -> str:
        """A code to type on the phone (whatsmeow's ``PairPhone``) instead of scanning a QR.

        ``InvalidInput`` for a bad number, ``WrongState`` once paired, ``Unavailable`` while
        not connected to the WhatsApp network."""
        number = normalize_phone_number(phone_number)
        if self._jid is not None:
            raise WrongState(f"session {self._account} is paired already", state="paired")
        link = self._link
        if self._is_stopped or link is None or not link.is_online or link.ended.done():
            raise Unavailable("not connected to the WhatsApp network", retry_after_ms=2_000)
        try:
            code = await self._call(PAIR_TIMEOUT_SECONDS, link.client.PairPhone, number, True)
        except PairPhoneError as error:
            if "phone number" in str(error).lower():
                raise InvalidInput(f"WhatsApp refused the number: {error}") from error
            raise Unavailable(f"WhatsApp gave no pairing code: {error}") from error
        except TimeoutError as error:
            raise Unavailable("WhatsApp gave no pairing code in time") from error
        link.is_pairing_by_code = True
        self._expire_qr_after(link, PAIRING_CODE_LIFETIME_SECONDS)
        return str(code)

    async def stop(self, *, logout: bool) -> None:
        """Disconnect and let go of the store (with ``logout`` also log out, best effort, and
        delete the store); within :data:`STOP_TIMEOUT_SECONDS`; no event follows."""
        if self._is_stopped:
            return
        self._is_stopped = True
        self._is_ready = False
        self.state = "stopped"
        if self._run_task is not None:
            self._run_task.cancel()
            await asyncio.gather(self._run_task, return_exceptions=True)
        link = self._link
        try:
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                if logout and link is not None and link.is_online and self._jid is not None:
                    with contextlib.suppress(Exception):  # offline: the phone unlinks it later
                        await self._call(LOGOUT_TIMEOUT_SECONDS, link.client.logout)
                if link is not None:
                    await self._close_link(link)
                if logout:
                    await self._off_loop(remove_store, self._store_path)
                    await self._ids.forget()
        except TimeoutError:
            _log.warning("whatsmeow_stop_timed_out", account=self._account, logout=logout)

    # -- the connection loop -----------------------------------------------------------

    async def _run(self) -> None:
        while True:
            link = self._open_link()
            next_step, detail = await link.ended
            await self._close_link(link)
            if next_step is Next.STAY_DOWN:
                self.state = "replaced" if self.state != "failed" else self.state
                return
            if next_step is Next.FORGET_DEVICE:
                self._jid = None
                await self._off_loop(remove_store, self._store_path)
                continue  # pair again: a new connection shows QR codes
            if detail == _QR_EXPIRED:
                self._qr_rounds += 1
                if self._qr_rounds >= MAX_QR_ROUNDS:
                    self.state = "failed"
                    self._emit(DriverEvent(kind=DriverEventKind.FAILED, reason=_QR_EXPIRED))
                    return
                continue
            self._report_down(detail)
            await self._wait_to_reconnect()

    async def _wait_to_reconnect(self) -> None:
        """Sleep the backoff, then again until the endpoint answers (no SQLite handle spent)."""
        self.state = "waiting_to_reconnect"
        while True:
            await asyncio.sleep(self._reconnects.next_delay_seconds())
            if self._probe_address is None:
                return
            self.probe_attempts += 1
            host, port = self._probe_address
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                    _, writer = await asyncio.open_connection(host, port)
                writer.close()
                return
            except (OSError, TimeoutError) as error:
                _log.debug("whatsmeow_unreachable", account=self._account, error=repr(error))

    def _open_link(self) -> Link:
        link = Link(
            account=self._account,
            store_path=self._store_path,
            loop=asyncio.get_running_loop(),
            on_event=self._on_wa_event,
            on_qr=self._on_qr,
        )
        self._link = link
        self.connect_attempts += 1
        self.state = "connecting"
        link.start()
        return link

    async def _close_link(self, link: Link) -> None:
        """Stop neonize's client and wait for its ``Neonize`` call to return (bounded)."""
        if link.qr_timer is not None:
            link.qr_timer.cancel()
        self._is_ready = False
        link.end(Next.RECONNECT, "closed")
        if not link.is_closed:
            link.is_closed = True
            # Stop again if the call had not registered itself with Go yet when first told.
            while not link.returned.is_set():
                with contextlib.suppress(TimeoutError):
                    await self._call(1.0, link.client.stop)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await link.returned.wait()

    # -- callbacks, on the loop ----------------------------------------------------------

    def _on_wa_event(self, link: Link, message: Any) -> None:
        if link is not self._link or link.ended.done() or self._is_stopped:
            return
        if isinstance(message, wa.Connected):
            link.is_online = True
            self._is_ready = True
            self._is_down_reported = False
            self._qr_rounds = 0
            self._reconnects.reset()
            self.state = "ready"
        mapped = map_event(message, now_unix=time.time(), client_message_id=self._ids.client_id_of)
        for event in mapped.events:
            if event.kind is DriverEventKind.PAIRED:
                self._jid = str(event.credentials["jid"])
                link.is_paired = True
                if link.qr_timer is not None:
                    link.qr_timer.cancel()
            elif event.kind is DriverEventKind.FAILED:
                self.state = "failed"
            elif event.kind is DriverEventKind.DISCONNECTED:
                self._is_ready = False
                if event.reason == "network":
                    if self._is_down_reported:
                        continue
                    self._is_down_reported = True
            self._emit(event)
        if mapped.next is not Next.CONTINUE:
            self._is_ready = False
            link.end(mapped.next, mapped.events[0].text if mapped.events else "")

    def _on_qr(self, link: Link, code: str) -> None:
        if link is not self._link or link.ended.done() or self._is_stopped:
            return
        link.is_online = True
        self.state = "qr"
        event = qr_event(code, index=link.qr_count, now_unix=time.time())
        link.qr_count += 1
        self._emit(event)
        if not link.is_pairing_by_code:
            self._expire_qr_after(link, event.expire_at_unix - time.time() + QR_GRACE_SECONDS)

    def _expire_qr_after(self, link: Link, seconds: float) -> None:
        if link.qr_timer is not None:
            link.qr_timer.cancel()

        def expired() -> None:
            if not link.is_paired:
                link.end(Next.RECONNECT, _QR_EXPIRED)

        link.qr_timer = asyncio.get_running_loop().call_later(seconds, expired)

    def _emit(self, event: DriverEvent) -> None:
        if self._is_stopped or self._on_event is None:
            return
        call_safely(self._on_event, event)

    def _report_down(self, detail: str) -> None:
        """One DISCONNECTED(network) per outage, not one per failed attempt."""
        self._is_ready = False
        if not self._is_down_reported:
            self._is_down_reported = True
            down = DriverEvent(kind=DriverEventKind.DISCONNECTED, reason="network", text=detail)
            self._emit(down)

    async def _call(self, timeout_seconds: float, function: Callable[..., _T], *args: Any) -> _T:
        async with asyncio.timeout(timeout_seconds):
            return await self._off_loop(function, *args)

    async def _off_loop(self, function: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(blocking_pool(), function, *args)


class WhatsmeowDriverFactory:
    """Makes a :class:`WhatsmeowDriver` per session, its store in the session's folder."""

    def __init__(
        self,
        storage_root: Path,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        probe_address: tuple[str, int] | None = WHATSAPP_ENDPOINT,
    ) -> None:
        self._root = Path(storage_root).resolve()
        self._backoff = backoff
        self._probe_address = probe_address

    def store_path(self, workspace_id: str, session_id: str) -> Path:
        """``<root>/workspace_<ws>/<sid>/whatsmeow.sqlite3``; ``InvalidInput`` for a bad id."""
        validate_id(workspace_id, field="workspace_id")
        validate_id(session_id, field="session_id")
        path = Path(os.path.normpath(self._root / f"workspace_{workspace_id}" / session_id))
        if not path.is_relative_to(self._root) or path == self._root:
            raise InvalidInput(f"session folder {path} leaves the storage root")
        return path / STORE_FILE

    def __call__(self, workspace_id: str, session_id: str) -> WhatsmeowDriver:
        """A new, unstarted driver for the session."""
        return WhatsmeowDriver(
            workspace_id=workspace_id,
            session_id=session_id,
            store_path=self.store_path(workspace_id, session_id),
            backoff=self._backoff,
            probe_address=self._probe_address,
        )
