"""SimNet: a small stand-in for a WhatsApp-like network, and the ground truth of tests.

It pairs accounts through rotating QR codes (or a pairing code typed on the simulated phone,
as WhatsApp's "link with phone number"), keeps one live connection per account
(a second one kicks the first: "connection replaced"), delivers each message id once
per account with SENT → DELIVERED → READ acks, and pushes inbound messages. Everything
it saw is recorded in a :class:`~simnet.records.Ledger` so tests can prove that nothing
was lost, nothing was sent twice and no account ever had two live connections. The wire
protocol is documented in :mod:`simnet.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import secrets
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from registry import MessageStatus
from simnet import protocol as p
from simnet.records import (
    PAIRED_BY_CODE,
    PAIRED_BY_QR,
    Delivery,
    Ledger,
    LiveInterval,
    Pairing,
    ReplacedEvent,
)

_log = structlog.get_logger(__name__)

PAIRING_CODE_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
"""The characters of a pairing code (whatsmeow's: no 0, O, I or U to misread)."""
PAIRING_CODE_CHARS = 8


def new_pairing_code() -> str:
    """A random pairing code as WhatsApp shows it: ``ABCD-EFGH``."""
    code = "".join(secrets.choice(PAIRING_CODE_ALPHABET) for _ in range(PAIRING_CODE_CHARS))
    return f"{code[:4]}-{code[4:]}"


class _State(enum.Enum):
    IDLE = "idle"  # not bound yet, or told logged_out (may connect again)
    PAIRING = "pairing"  # showing QR codes
    LIVE = "live"  # ready: the one connection of its account
    CLOSED = "closed"


@dataclass(eq=False)
class _Connection:
    connection_id: int
    writer: asyncio.StreamWriter
    account: str = ""
    state: _State = _State.IDLE
    pairing_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def send(self, message: dict[str, Any]) -> None:
        # Lines are small and the handler drains after each request; a dead peer is
        # noticed by the reader, so a failed write here needs no handling of its own.
        if self.state is not _State.CLOSED and not self.writer.is_closing():
            self.writer.write(p.encode_line(message))

    def close(self, *, is_abrupt: bool = False) -> None:
        self.state = _State.CLOSED
        for task in self.pairing_tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.pairing_tasks.clear()
        if is_abrupt:
            self.writer.transport.abort()
        else:
            self.writer.close()


class SimNet:
    """The simulated network: serve it with :meth:`start`, inspect its records any time."""

    def __init__(
        self, *, pair_delay_ms: int = 200, qr_rotate_ms: int = 20_000, ack_delay_ms: int = 5
    ) -> None:
        self._pair_delay_ms = pair_delay_ms
        self._qr_rotate_ms = max(qr_rotate_ms, 1)
        self._ack_delay_ms = max(ack_delay_ms, 0)
        self._ledger = Ledger()
        self._server: asyncio.Server | None = None
        self._address = ""
        self._credentials: dict[str, str] = {}
        self._live: dict[str, _Connection] = {}
        self._connections: dict[_Connection, asyncio.Task[Any] | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connection_ids = itertools.count(1)
        self._inbound_ids = itertools.count(1)
        self._is_stopped = False

    # -- serving -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` actually bound (after :meth:`start`)."""
        return self._address

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0: any free port)."""
        self._is_stopped = False
        self._server = await asyncio.start_server(self._serve, host, port, limit=p.MAX_LINE_BYTES)
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self._address = f"{bound_host}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        self._is_stopped = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            self._end_live(connection)
            connection.close()
        for task in list(self._tasks):
            task.cancel()
        handlers = [task for task in self._connections.values() if task is not None]
        await asyncio.gather(*self._tasks, *handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._is_stopped:  # accepted just before stop; stop no longer waits for it
            writer.close()
            return
        connection = _Connection(next(self._connection_ids), writer)
        self._connections[connection] = asyncio.current_task()
        try:
            while connection.state is not _State.CLOSED:
                line = await reader.readline()
                if not line:
                    break
                try:
                    request = p.decode_line(line)
                except p.ProtocolError:
                    connection.send({"ev": p.EV_ERROR, "reason": p.REASON_BAD_REQUEST})
                else:
                    await self._handle(connection, request)
                await writer.drain()
        except (ConnectionError, ValueError):  # ValueError: a line over MAX_LINE_BYTES
            pass
        finally:
            self._end_live(connection)
            connection.close()
            del self._connections[connection]
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    # -- protocol ------------------------------------------------------------------

    async def _handle(self, connection: _Connection, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == p.OP_CONNECT:
            self._connect(connection, request)
        elif op == p.OP_SEND:
            self._send(connection, request)
        elif op == p.OP_PAIR_CODE:
            self._pair_code(connection, request)
        elif op == p.OP_LOGOUT:
            if connection.state is _State.LIVE:
                self._credentials.pop(connection.account, None)
                self._end_live(connection)
            connection.close()
        elif op == p.OP_STATS:
            include_ids = request.get("include_ids", True) is not False
            connection.send({"ev": p.EV_STATS, **self.stats(include_ids=include_ids)})
        elif op == p.OP_PUSH:
            try:
                message_id = await self.push_inbound(
                    str(request.get("account", "")),
                    str(request.get("from", "")),
                    str(request.get("text", "")),
                )
            except LookupError:
                connection.send({"ev": p.EV_ERROR, "reason": p.REASON_NOT_LIVE})
            else:
                connection.send({"ev": p.EV_PUSHED, "id": message_id})
        elif op == p.OP_DROP:
            account = str(request.get("account", ""))
            was_live = await self.drop(account)
            connection.send({"ev": p.EV_DROPPED, "account": account, "was_live": was_live})
        else:
            connection.send({"ev": p.EV_ERROR, "reason": p.REASON_BAD_REQUEST})

    def _connect(self, connection: _Connection, request: dict[str, Any]) -> None:
        account = request.get("account")
        token = request.get("credentials")
        if not isinstance(account, str) or not account or not isinstance(token, str | None):
            connection.send({"ev": p.EV_ERROR, "reason": p.REASON_BAD_REQUEST})
            return
        if connection.state is not _State.IDLE:
            connection.send({"ev": p.EV_ERROR, "reason": p.REASON_ALREADY_CONNECTED})
            return
        connection.account = account
        if token is not None:
            if self._credentials.get(account) == token:
                self._make_live(connection)
            else:
                connection.send({"ev": p.EV_LOGGED_OUT})
            return
        connection.state = _State.PAIRING
        connection.pairing_tasks.append(self._spawn(self._rotate_qr_codes(connection)))
        if self._pair_delay_ms >= 0:
            connection.pairing_tasks.append(self._spawn(self._scan_after_delay(connection)))

    async def _rotate_qr_codes(self, connection: _Connection) -> None:
        rotate_seconds = self._qr_rotate_ms / 1000
        while connection.state is _State.PAIRING:
            self._ledger.record_qr(connection.account)
            code = f"2@{secrets.token_urlsafe(24)},{connection.account}"
            expire_at = time.time() + rotate_seconds
            connection.send({"ev": p.EV_QR, "code": code, "expire_at": expire_at})
            await asyncio.sleep(rotate_seconds)

    async def _scan_after_delay(self, connection: _Connection) -> None:
        # The simulated phone scans whichever code is showing once the delay has passed.
        await asyncio.sleep(self._pair_delay_ms / 1000)
        self._complete_pairing(connection, PAIRED_BY_QR)

    def _pair_code(self, connection: _Connection, request: dict[str, Any]) -> None:
        phone_number = request.get("phone")
        if not isinstance(phone_number, str) or not phone_number:
            refusal = {"ev": p.EV_ERROR, "op": p.OP_PAIR_CODE, "reason": p.REASON_BAD_REQUEST}
            connection.send(refusal)
            return
        if connection.state is not _State.PAIRING:
            refusal = {"ev": p.EV_ERROR, "op": p.OP_PAIR_CODE, "reason": p.REASON_NOT_PAIRING}
            connection.send(refusal)
            return
        self._ledger.record_pairing_code(connection.account)
        connection.send({"ev": p.EV_PAIRING_CODE, "code": new_pairing_code()})
        entry = self._enter_code_after_delay(connection, phone_number)
        connection.pairing_tasks.append(self._spawn(entry))

    async def _enter_code_after_delay(self, connection: _Connection, phone_number: str) -> None:
        # The simulated phone types the code in after the pair delay; someone asked for the
        # code on purpose, so it does even when nobody scans QR codes (a negative delay).
        await asyncio.sleep(max(self._pair_delay_ms, 0) / 1000)
        self._complete_pairing(connection, PAIRED_BY_CODE, phone_number=phone_number)

    def _complete_pairing(
        self, connection: _Connection, method: str, *, phone_number: str = ""
    ) -> None:
        if connection.state is not _State.PAIRING:
            return
        for task in connection.pairing_tasks:
            if task is not asyncio.current_task():
                task.cancel()
        connection.pairing_tasks.clear()
        token = secrets.token_urlsafe(24)
        self._credentials[connection.account] = token
        self._ledger.record_paired(connection.account, method, phone_number=phone_number)
        connection.send({"ev": p.EV_PAIRED, "credentials": token})
        self._make_live(connection)

    def _make_live(self, connection: _Connection) -> None:
        account = connection.account
        previous = self._live.get(account)
        if previous is not None and previous is not connection:
            # What the real network does to a second device session of one account.
            _log.info("connection_replaced", account=account)
            self._ledger.record_replaced(account)
            self._end_live(previous)
            previous.send({"ev": p.EV_REPLACED})
            previous.close()
        connection.state = _State.LIVE
        self._live[account] = connection
        self._ledger.went_live(account, connection.connection_id)
        connection.send({"ev": p.EV_READY})

    def _end_live(self, connection: _Connection) -> None:
        if connection.state is not _State.LIVE:
            return
        connection.state = _State.IDLE
        if self._live.get(connection.account) is connection:
            del self._live[connection.account]
        self._ledger.went_down(connection.connection_id)

    def _send(self, connection: _Connection, request: dict[str, Any]) -> None:
        message_id = request.get("id")
        to, text = request.get("to", ""), request.get("text", "")
        if not isinstance(message_id, str) or not message_id:
            connection.send({"ev": p.EV_ERROR, "reason": p.REASON_BAD_REQUEST})
            return
        if connection.state is not _State.LIVE:
            connection.send({"ev": p.EV_ERROR, "id": message_id, "reason": p.REASON_NOT_READY})
            return
        account = connection.account
        if not self._ledger.record_send(account, message_id, str(to), str(text)):
            status = self._ledger.status_of(account, message_id)
            connection.send({"ev": p.EV_ACK, "id": message_id, "status": status})
            return
        connection.send({"ev": p.EV_ACK, "id": message_id, "status": MessageStatus.SENT.value})
        self._spawn(self._advance_acks(account, message_id))

    async def _advance_acks(self, account: str, message_id: str) -> None:
        # The message progresses on the network even if its sender is away; receipts go
        # to whichever connection of the account is live when they happen.
        for status in (MessageStatus.DELIVERED.value, MessageStatus.READ.value):
            await asyncio.sleep(self._ack_delay_ms / 1000)
            self._ledger.set_status(account, message_id, status)
            live = self._live.get(account)
            if live is not None:
                live.send({"ev": p.EV_ACK, "id": message_id, "status": status})

    # -- injection -------------------------------------------------------------------

    def pair(self, account: str) -> bool:
        """Scan the QR code of ``account``'s newest pending connection now; False if none."""
        pending = [
            c for c in self._connections if c.account == account and c.state is _State.PAIRING
        ]
        if not pending:
            return False
        self._complete_pairing(max(pending, key=lambda c: c.connection_id), PAIRED_BY_QR)
        return True

    async def push_inbound(self, account: str, sender: str, text: str) -> str:
        """Send an inbound message to ``account``'s live connection; its id.

        Raises ``LookupError`` if the account has no live connection.
        """
        live = self._live.get(account)
        if live is None:
            raise LookupError(f"account {account!r} has no live connection")
        message_id = f"in-{next(self._inbound_ids)}"
        self._ledger.record_inbound(account, message_id, sender, text)
        live.send({"ev": p.EV_INBOUND, "id": message_id, "from": sender, "text": text})
        with contextlib.suppress(ConnectionError):
            await live.writer.drain()
        return message_id

    async def drop(self, account: str) -> bool:
        """Cut ``account``'s live connection abruptly, like a network blip; False if none."""
        live = self._live.get(account)
        if live is None:
            return False
        self._end_live(live)
        live.close(is_abrupt=True)
        return True

    # -- inspection ----------------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Every first delivery of a message id, in order."""
        return self._ledger.deliveries

    @property
    def replaced_events(self) -> list[ReplacedEvent]:
        """Each time a second connection kicked a live one (account, time)."""
        return self._ledger.replaced_events

    @property
    def live_intervals(self) -> list[LiveInterval]:
        """Every live span of every connection; open ones have ``ended_unix`` None."""
        return self._ledger.live_intervals

    @property
    def max_concurrent_live(self) -> dict[str, int]:
        """Per account, the most connections ever live at once (1 unless simnet is broken)."""
        return self._ledger.max_concurrent_live

    @property
    def resend_count(self) -> int:
        """How many sends repeated an id that was already delivered."""
        return self._ledger.resend_count

    def delivered_ids(self, account: str) -> Counter[str]:
        """How many times each message id of ``account`` was delivered (1 each)."""
        return self._ledger.delivered_ids(account)

    def qr_issued(self, account: str) -> int:
        """How many QR codes were shown for ``account``."""
        return self._ledger.qr_issued(account)

    @property
    def pairings(self) -> list[Pairing]:
        """Every pairing, in order: by QR scan (``method`` ``qr``) or by pairing code."""
        return self._ledger.pairings

    def pairing_codes_issued(self, account: str) -> int:
        """How many pairing codes were given out for ``account``."""
        return self._ledger.pairing_codes_issued(account)

    def live_accounts(self) -> set[str]:
        """Accounts with a live connection now."""
        return set(self._live)

    def stats(self, *, include_ids: bool = True) -> dict[str, Any]:
        """A JSON-able summary of the ledger, plus what is connected now."""
        return {
            **self._ledger.stats(include_ids=include_ids),
            "live_accounts": len(self._live),
            "connections": len(self._connections),
            "paired_accounts": len(self._credentials),
        }
