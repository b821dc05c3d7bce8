"""One neonize connection attempt of the ``whatsmeow`` driver, and the threads it runs on.

neonize's own ``connect`` blocks its caller and polls a second thread every 0.2 s; with a
thousand idle clients that is five thousand wake-ups a second. Here the blocking Go call
(``Neonize``, which returns only once ``Stop`` cancels it, or when the first connect fails)
runs on one daemon thread per attempt, and neonize's other blocking calls on a shared pool of
daemon threads, so none of them ever holds up the event loop or a process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.daemon_pool import DaemonThreadPool
from node.drivers.whatsmeow_events import Next
from node.drivers.whatsmeow_neonize import (
    EVENT_TO_INT,
    DeviceProps,
    NewClient,
    binder,
    log_whatsmeow,
    wa,
)

SUBSCRIBED = (
    wa.Connected,
    wa.PairStatus,
    wa.LoggedOut,
    wa.StreamReplaced,
    wa.TemporaryBan,
    wa.ConnectFailure,
    wa.ClientOutdated,
    wa.Disconnected,
    wa.Receipt,
    wa.Message,
)
"""The neonize events the driver listens to (see :func:`whatsmeow_events.map_event`)."""
BLOCKING_THREADS = 64
_STORE_SUFFIXES = ("", "-wal", "-shm", "-journal")
_numbers = itertools.count(1)
_pool_lock = threading.Lock()
_pool: DaemonThreadPool | None = None


def blocking_pool() -> DaemonThreadPool:
    """The daemon threads for neonize's blocking calls and the driver's file work."""
    global _pool  # noqa: PLW0603 - one pool per process, made on first use
    with _pool_lock:
        if _pool is None:
            _pool = DaemonThreadPool(BLOCKING_THREADS, thread_name_prefix="whatsmeow")
        return _pool


def remove_store(path: Path) -> None:
    """Delete a whatsmeow SQLite store and its side files (none there is fine)."""
    for suffix in _STORE_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


class Link:
    """One connection attempt: a neonize client and its blocking ``Neonize`` call, whose
    events reach ``on_event``/``on_qr`` on the loop (``self`` first)."""

    def __init__(
        self,
        *,
        account: str,
        store_path: Path,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[Link, Any], None],
        on_qr: Callable[[Link, str], None],
    ) -> None:
        # Unique per attempt: neonize keys its Go-side client by it, and a late garbage
        # collection of this client's wrapper stops only this attempt.
        self.uuid = f"{account}#{next(_numbers)}-{secrets.token_hex(4)}"
        self.client = NewClient(str(store_path), uuid=self.uuid)
        self.ended: asyncio.Future[tuple[Next, str]] = loop.create_future()
        """What ended the attempt and why; set once."""
        self.returned = asyncio.Event()
        """The ``Neonize`` call returned: the Go side let go of this client."""
        self.qr_count = 0
        self.qr_timer: asyncio.TimerHandle | None = None
        self.is_online = False
        self.is_paired = False
        self.is_pairing_by_code = False
        self.is_closed = False
        self._loop = loop

        def event(_: Any, message: Any) -> None:  # on a Go thread
            self.threadsafe(on_event, self, message)

        def qr(_: Any, code: bytes) -> None:  # on a Go thread
            self.threadsafe(on_qr, self, code.decode(errors="replace"))

        for kind in SUBSCRIBED:
            self.client.event.list_func[EVENT_TO_INT[kind]] = event
        self.client.event.qr(qr)

    def start(self) -> None:
        """Start the blocking call on its own daemon thread."""
        threading.Thread(target=self._run, name=f"neonize-{self.uuid}", daemon=True).start()

    def end(self, next_step: Next, detail: str = "") -> None:
        """Say what ends this attempt (the first call wins)."""
        if not self.ended.done():
            self.ended.set_result((next_step, detail))

    def threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop, from any thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        try:
            error = _run_neonize(self.client)
        except BaseException as failure:  # whatever it is, the loop must hear the call ended
            error = repr(failure)
        self.threadsafe(self._returned, error)

    def _returned(self, error: str) -> None:
        self.returned.set()
        self.end(Next.RECONNECT, error or "the connection ended")


def _ignore_login_status(uuid: int, status: int) -> None:
    """neonize prints these; the QR timer and the events already tell the driver."""


def _run_neonize(client: Any) -> str:
    """neonize's ``connect`` without its polling: the Go call itself, blocking until
    ``Stop``; '' or the error that ended it."""
    event = client.event
    subscribers = bytearray(event.list_func)
    refs = (
        binder.func_string(client._NewClient__onQr),
        binder.func_string(_ignore_login_status),
        binder.func_callback_bytes(event.execute),
        binder.func_callback_bytes2(log_whatsmeow),
        (ctypes.c_char * len(subscribers)).from_buffer(subscribers),
    )
    client._connect_refs = (*refs, subscribers)  # alive as long as Go may call them
    props = DeviceProps(os="sessionmesh", platformType=DeviceProps.DESKTOP)
    props_bytes = props.SerializeToString()
    error = binder.gocode.Neonize(
        client.name.encode(), client.uuid, b"", 0, 0, b"WARN", *refs[:4], refs[4],
        len(subscribers), props_bytes, len(props_bytes), b"", 0, None,
    )  # fmt: skip
    return bytes(error or b"").decode(errors="replace")
