"""The ``sim`` driver: a multi-device client of simnet, one TCP connection per session.

It behaves like a real multi-device client: QR codes (or a pairing code typed on the phone)
and pairing without credentials, straight to READY with them (so a restart or a move needs
no new scan), acks per message, and reconnects with a bounded, jittered backoff after a
network blip. When another connection replaces it, it reports ``connection_replaced`` and
stays down: a replaced session that reconnected would kick the other one back, which is
exactly the "connection replaced" loop of two hosts running one session.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import Any

import structlog
from opentelemetry import trace

from node.drivers.base import LOGGED_OUT, DriverEvent, DriverEventKind, EventCallback
from registry import (
    Backoff,
    InvalidInput,
    Retries,
    Unavailable,
    WrongState,
    call_safely,
    parse_host_port,
)
from simnet import protocol as p

_log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

MAX_RECONNECT_BACKOFF_MS = 5_000
"""The reconnect backoff doubles from ``reconnect_backoff_ms`` up to this."""
CONNECT_TIMEOUT_SECONDS = 5.0
LOGOUT_TIMEOUT_SECONDS = 2.0
PAIRING_CODE_TIMEOUT_SECONDS = 10.0
"""How long simnet may take to answer a pairing code request."""
PAIRED_STATE = "authenticated"
"""The state ``WrongState`` names when simnet is not pairing: it paired the account already."""
_READ_LIMIT_BYTES = 1 << 20  # events are small; a longer line means a broken peer


class _Ending(enum.Enum):
    LOST = "lost"
    REPLACED = "replaced"


def _parse_address(address: str) -> tuple[str, int]:
    return parse_host_port(address, field="simnet address")


class SimDriver:
    """One session's connection to simnet (see :class:`node.drivers.base.Driver`)."""

    def __init__(
        self,
        *,
        workspace_id: str,
        session_id: str,
        simnet_address: str,
        reconnect_backoff_ms: int = 200,
    ) -> None:
        self._workspace_id = workspace_id
        self._session_id = session_id
        self._account = f"{workspace_id}/{session_id}"
        self._host, self._port = _parse_address(simnet_address)
        # Exponential, capped, with jitter so that a simnet restart is not hit by every
        # session in the same millisecond.
        self._reconnects = Retries(
            Backoff(
                initial_seconds=max(reconnect_backoff_ms, 1) / 1000,
                max_seconds=MAX_RECONNECT_BACKOFF_MS / 1000,
                jitter=0.5,
            )
        )
        self._on_event: EventCallback | None = None
        self._token: str | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._is_ready = False
        self._is_down_reported = False
        self._is_stopped = False
        self._pairing_code_lock = asyncio.Lock()
        self._pairing_code: asyncio.Future[str] | None = None
        """The answer a pairing code request waits for (set by the connection loop)."""

    @property
    def is_ready(self) -> bool:
        """Whether ``send`` would be accepted now."""
        return self._is_ready

    async def start(self, credentials: dict[str, Any] | None, on_event: EventCallback) -> None:
        """Connect and ask for the account; returns once asked (events report the rest)."""
        if self._run_task is not None or self._is_stopped:
            raise RuntimeError("a SimDriver starts once")
        self._on_event = on_event
        token = (credentials or {}).get("token")
        self._token = token if isinstance(token, str) and token else None
        if not await self._open():
            self._report_down()
        self._run_task = asyncio.get_running_loop().create_task(
            self._run(), name=f"sim-driver-{self._account}"
        )

    async def send(self, message_id: str, to: str, text: str) -> None:
        """Hand a message to simnet; raises ``Unavailable`` unless READY."""
        attributes = {
            "sessionmesh.workspace_id": self._workspace_id,
            "sessionmesh.session_id": self._session_id,
            "sessionmesh.message_id": message_id,
        }
        with _tracer.start_as_current_span("sim.send", attributes=attributes):
            writer = self._writer
            if not self._is_ready or writer is None or writer.is_closing():
                raise Unavailable("session is not connected")
            request = {"op": p.OP_SEND, "id": message_id, "to": to, "text": text}
            try:
                writer.write(p.encode_line(request))
                await writer.drain()
            except (ConnectionError, RuntimeError) as error:
                raise Unavailable("session is not connected") from error

    async def request_pairing_code(self, phone_number: str) -> str:
        """Ask simnet for a pairing code (it pairs once its phone "enters" it); raises
        ``Unavailable`` if not connected, ``WrongState`` if simnet is not pairing."""
        async with self._pairing_code_lock:  # one request at a time: one answer to wait for
            writer = self._writer
            if self._is_stopped or writer is None or writer.is_closing():
                raise Unavailable("session is not connected")
            answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._pairing_code = answer
            try:
                writer.write(p.encode_line({"op": p.OP_PAIR_CODE, "phone": phone_number}))
                await writer.drain()
                async with asyncio.timeout(PAIRING_CODE_TIMEOUT_SECONDS):
                    return await answer
            except (ConnectionError, RuntimeError) as error:
                raise Unavailable("session is not connected") from error
            except TimeoutError as error:
                raise Unavailable("simnet did not answer the pairing code request") from error
            finally:
                self._pairing_code = None

    def _answer_pairing_code(self, *, code: str = "", error: Exception | None = None) -> None:
        answer = self._pairing_code
        if answer is None or answer.done():
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(code)

    def _pairing_code_refused(self, reason: str) -> Exception:
        if reason == p.REASON_NOT_PAIRING:
            return WrongState(
                f"session {self._account} is not waiting to pair: the network paired it",
                state=PAIRED_STATE,
            )
        if reason == p.REASON_BAD_REQUEST:
            return InvalidInput("simnet refused the phone number of the pairing code")
        return Unavailable(f"simnet refused the pairing code request: {reason}")

    async def stop(self, *, logout: bool) -> None:
        """Disconnect (with ``logout`` first forget the pairing); no event follows."""
        if self._is_stopped:
            return
        self._is_stopped = True  # from here on, no event reaches the callback
        if self._run_task is not None:
            self._run_task.cancel()
            await asyncio.gather(self._run_task, return_exceptions=True)
        reader, writer = self._reader, self._writer
        if logout and reader is not None and writer is not None and not writer.is_closing():
            # Wait for simnet to close the connection: once stop returns, the logout is done.
            with contextlib.suppress(ConnectionError, RuntimeError, ValueError, TimeoutError):
                writer.write(p.encode_line({"op": p.OP_LOGOUT}))
                await writer.drain()
                async with asyncio.timeout(LOGOUT_TIMEOUT_SECONDS):
                    while await reader.readline():
                        pass
        self._is_ready = False
        await self._close_socket()

    # -- the connection loop -----------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self._writer is None:
                await asyncio.sleep(self._reconnects.next_delay_seconds())
                if not await self._open():
                    self._report_down()
                    continue
            ending = await self._read_events()
            self._is_ready = False
            await self._close_socket()
            if ending is _Ending.REPLACED:
                return
            self._report_down()

    async def _open(self) -> bool:
        """Connect and send the connect op; False if simnet cannot be reached."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                self._reader, self._writer = await asyncio.open_connection(
                    self._host, self._port, limit=_READ_LIMIT_BYTES
                )
                await self._write_connect()
        except (OSError, TimeoutError) as error:
            _log.debug("simnet_unreachable", account=self._account, error=error)
            await self._close_socket()
            return False
        self._is_down_reported = False
        return True

    async def _write_connect(self) -> None:
        if self._writer is None:
            raise ConnectionResetError("no connection to simnet")
        request = {"op": p.OP_CONNECT, "account": self._account, "credentials": self._token}
        self._writer.write(p.encode_line(request))
        await self._writer.drain()

    async def _read_events(self) -> _Ending:
        reader = self._reader
        if reader is None:
            return _Ending.LOST
        try:
            while line := await reader.readline():
                try:
                    event = p.decode_line(line)
                    ending = await self._handle(event)
                except (p.ProtocolError, KeyError, TypeError, ValueError) as error:
                    _log.warning("simnet_bad_event", account=self._account, error=error)
                    continue
                if ending is not None:
                    return ending
        except (ConnectionError, ValueError):  # ValueError: a line over the read limit
            pass
        return _Ending.LOST

    async def _handle(self, event: dict[str, Any]) -> _Ending | None:
        kind = event.get("ev")
        if kind == p.EV_QR:
            self._emit(
                DriverEvent(
                    kind=DriverEventKind.QR,
                    qr_code=str(event["code"]),
                    expire_at_unix=float(event["expire_at"]),
                )
            )
        elif kind == p.EV_PAIRING_CODE:
            self._answer_pairing_code(code=str(event["code"]))
        elif kind == p.EV_ERROR and event.get("op") == p.OP_PAIR_CODE:
            self._answer_pairing_code(error=self._pairing_code_refused(str(event.get("reason"))))
        elif kind == p.EV_PAIRED:
            self._token = str(event["credentials"])
            self._emit(DriverEvent(kind=DriverEventKind.PAIRED, credentials={"token": self._token}))
        elif kind == p.EV_READY:
            self._is_ready = True
            self._reconnects.reset()
            self._emit(DriverEvent(kind=DriverEventKind.READY))
        elif kind == p.EV_ACK:
            self._emit(
                DriverEvent(
                    kind=DriverEventKind.ACK,
                    message_id=str(event["id"]),
                    status=str(event["status"]),
                )
            )
        elif kind == p.EV_INBOUND:
            self._emit(
                DriverEvent(
                    kind=DriverEventKind.INBOUND,
                    message_id=str(event["id"]),
                    sender=str(event["from"]),
                    text=str(event["text"]),
                )
            )
        elif kind == p.EV_LOGGED_OUT:
            # The pairing is gone (logged out elsewhere): pair again on the same connection.
            self._is_ready = False
            self._token = None
            self._emit(DriverEvent(kind=DriverEventKind.DISCONNECTED, reason=LOGGED_OUT))
            await self._write_connect()
        elif kind == p.EV_REPLACED:
            self._is_ready = False
            self._emit(DriverEvent(kind=DriverEventKind.DISCONNECTED, reason="connection_replaced"))
            return _Ending.REPLACED
        else:
            _log.info("simnet_event_ignored", account=self._account, simnet_event=event)
        return None

    def _emit(self, event: DriverEvent) -> None:
        if self._is_stopped or self._on_event is None:
            return
        call_safely(self._on_event, event)  # its failure must not end the connection loop

    def _report_down(self) -> None:
        """Report a network loss once per outage (not once per failed reconnect)."""
        self._is_ready = False
        if not self._is_down_reported:
            self._is_down_reported = True
            self._emit(DriverEvent(kind=DriverEventKind.DISCONNECTED, reason="network"))

    async def _close_socket(self) -> None:
        self._answer_pairing_code(error=Unavailable("the connection to simnet closed"))
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class SimDriverFactory:
    """Makes a :class:`SimDriver` per session, all talking to one simnet."""

    def __init__(self, *, simnet_address: str, reconnect_backoff_ms: int = 200) -> None:
        _parse_address(simnet_address)  # a bad address fails here, not in every session
        self._simnet_address = simnet_address
        self._reconnect_backoff_ms = reconnect_backoff_ms

    def __call__(self, workspace_id: str, session_id: str) -> SimDriver:
        """A new, unstarted driver for the session."""
        return SimDriver(
            workspace_id=workspace_id,
            session_id=session_id,
            simnet_address=self._simnet_address,
            reconnect_backoff_ms=self._reconnect_backoff_ms,
        )
