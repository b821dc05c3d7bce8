"""What simnet saw: the ground truth for "nothing lost, nothing twice, never two connections".

The :class:`Ledger` only records; the server decides. Keeping the two apart means the
numbers a test asserts on are counted in one place, independently of the code paths that
are supposed to make them come out right (the live count is tracked here, not inferred
from the server's "one live connection" map).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from registry import MessageStatus

MAX_IDS_PER_ACCOUNT_IN_STATS = 10_000
"""The ``stats`` answer lists at most this many delivered ids per account (keeps it bounded)."""


@dataclass(frozen=True)
class Delivery:
    """One message the network accepted from an account, the first time it saw its id."""

    account: str
    message_id: str
    to: str
    text: str
    at_unix: float


@dataclass(frozen=True)
class ReplacedEvent:
    """A live connection of ``account`` was kicked by a newer one at ``at_unix``."""

    account: str
    at_unix: float


@dataclass(frozen=True)
class LiveInterval:
    """A span during which one connection was live for its account (``ended_unix`` None: still)."""

    account: str
    connection_id: int
    started_unix: float
    ended_unix: float | None = None


@dataclass(frozen=True)
class Pairing:
    """An account was paired: by a scanned QR code (``method`` ``qr``) or by a pairing code
    the phone entered (``code``, with the ``phone_number`` the code was asked for)."""

    account: str
    method: str
    at_unix: float
    phone_number: str = ""


PAIRED_BY_QR = "qr"
"""``Pairing.method`` of an account paired by scanning a QR code."""
PAIRED_BY_CODE = "code"
"""``Pairing.method`` of an account paired by entering a pairing code."""


@dataclass(frozen=True)
class InboundMessage:
    """A message the network pushed to an account."""

    account: str
    message_id: str
    sender: str
    text: str
    at_unix: float


class Ledger:
    """Every delivery, resend, replacement, live interval, QR code, pairing code, pairing and
    inbound message."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        """Every first delivery of a message id, in order."""
        self.replaced_events: list[ReplacedEvent] = []
        """Each time a second connection kicked a live one."""
        self.live_intervals: list[LiveInterval] = []
        """Every live span of every connection; open ones have ``ended_unix`` None."""
        self.inbound: list[InboundMessage] = []
        """Every inbound message pushed to a live connection."""
        self.pairings: list[Pairing] = []
        """Every pairing, in order, with how it was done (QR scan or pairing code)."""
        self.resend_count = 0
        """How many sends repeated an id the network had already delivered."""
        self.max_concurrent_live: dict[str, int] = {}
        """Per account, the most connections that were ever live at once (1 = never two)."""
        self._status: dict[tuple[str, str], str] = {}
        self._deliveries_by_account: dict[str, list[Delivery]] = {}
        self._resends: Counter[str] = Counter()
        self._live_now: Counter[str] = Counter()
        self._open_interval: dict[int, int] = {}  # connection id -> index in live_intervals
        self._qr_issued: Counter[str] = Counter()
        self._pairing_codes_issued: Counter[str] = Counter()
        self._last_live_at: dict[str, float] = {}

    # -- recording ---------------------------------------------------------------

    def record_send(self, account: str, message_id: str, to: str, text: str) -> bool:
        """Count a send; True if it is the first of its id (a delivery), False for a resend."""
        key = (account, message_id)
        if key in self._status:
            self.resend_count += 1
            self._resends[account] += 1
            return False
        self._status[key] = MessageStatus.SENT.value
        delivery = Delivery(account, message_id, to, text, time.time())
        self.deliveries.append(delivery)
        self._deliveries_by_account.setdefault(account, []).append(delivery)
        return True

    def status_of(self, account: str, message_id: str) -> str:
        """The latest ack status of a delivered message ("" if never delivered)."""
        return self._status.get((account, message_id), "")

    def set_status(self, account: str, message_id: str, status: str) -> None:
        """The message reached ``status``."""
        self._status[(account, message_id)] = status

    def record_qr(self, account: str) -> None:
        """A QR code was shown for ``account``."""
        self._qr_issued[account] += 1

    def record_pairing_code(self, account: str) -> None:
        """A pairing code was given out for ``account``."""
        self._pairing_codes_issued[account] += 1

    def record_paired(self, account: str, method: str, *, phone_number: str = "") -> None:
        """``account`` was paired (``PAIRED_BY_QR`` or ``PAIRED_BY_CODE``)."""
        self.pairings.append(Pairing(account, method, time.time(), phone_number))

    def record_replaced(self, account: str) -> None:
        """A live connection of ``account`` was kicked by a newer one."""
        self.replaced_events.append(ReplacedEvent(account, time.time()))

    def record_inbound(self, account: str, message_id: str, sender: str, text: str) -> None:
        """An inbound message was pushed to ``account``."""
        self.inbound.append(InboundMessage(account, message_id, sender, text, time.time()))

    def went_live(self, account: str, connection_id: int) -> None:
        """A connection became live for ``account``."""
        self._live_now[account] += 1
        self.max_concurrent_live[account] = max(
            self.max_concurrent_live.get(account, 0), self._live_now[account]
        )
        self._open_interval[connection_id] = len(self.live_intervals)
        self._last_live_at[account] = time.time()
        self.live_intervals.append(LiveInterval(account, connection_id, time.time()))

    def went_down(self, connection_id: int) -> None:
        """A live connection stopped being live (closed, kicked, logged out, dropped)."""
        index = self._open_interval.pop(connection_id, None)
        if index is None:
            return
        interval = self.live_intervals[index]
        self._live_now[interval.account] -= 1
        self.live_intervals[index] = LiveInterval(
            interval.account, connection_id, interval.started_unix, time.time()
        )

    # -- inspecting ----------------------------------------------------------------

    def delivered_ids(self, account: str) -> Counter[str]:
        """How many times each message id of ``account`` was delivered (1 each, or a bug)."""
        # Indexed by account: chaos tests poll this for thousands of accounts.
        return Counter(d.message_id for d in self._deliveries_by_account.get(account, ()))

    def qr_issued(self, account: str) -> int:
        """How many QR codes were shown for ``account``."""
        return self._qr_issued[account]

    def pairing_codes_issued(self, account: str) -> int:
        """How many pairing codes were given out for ``account``."""
        return self._pairing_codes_issued[account]

    def stats(self, *, include_ids: bool = True) -> dict[str, Any]:
        """A JSON-able summary: totals, and per account its counts (and delivered ids)."""
        per_account: dict[str, dict[str, Any]] = {}

        def entry(account: str) -> dict[str, Any]:
            if account not in per_account:
                per_account[account] = {
                    "delivered": 0,
                    "duplicates": 0,
                    "resends": self._resends[account],
                    "replaced": 0,
                    "max_concurrent_live": self.max_concurrent_live.get(account, 0),
                    "qr_issued": self._qr_issued[account],
                    "pairing_codes_issued": self._pairing_codes_issued[account],
                    "paired_by_qr": 0,
                    "paired_by_code": 0,
                    "inbound": 0,
                    "last_live_at": self._last_live_at.get(account, 0.0),
                }
                if include_ids:
                    per_account[account]["delivered_ids"] = []
            return per_account[account]

        seen: set[tuple[str, str]] = set()
        for delivery in self.deliveries:
            counts = entry(delivery.account)
            counts["delivered"] += 1
            key = (delivery.account, delivery.message_id)
            if key in seen:
                counts["duplicates"] += 1
            seen.add(key)
            if include_ids and len(counts["delivered_ids"]) < MAX_IDS_PER_ACCOUNT_IN_STATS:
                counts["delivered_ids"].append(delivery.message_id)
        for event in self.replaced_events:
            entry(event.account)["replaced"] += 1
        for message in self.inbound:
            entry(message.account)["inbound"] += 1
        for pairing in self.pairings:
            entry(pairing.account)[f"paired_by_{pairing.method}"] += 1
        accounts = (
            *self._resends,
            *self.max_concurrent_live,
            *self._qr_issued,
            *self._pairing_codes_issued,
        )
        for account in accounts:
            entry(account)
        return {
            "deliveries": len(self.deliveries),
            "duplicate_deliveries": sum(c["duplicates"] for c in per_account.values()),
            "resends": self.resend_count,
            "replaced": len(self.replaced_events),
            "max_concurrent_live": max(self.max_concurrent_live.values(), default=0),
            "qr_issued": sum(self._qr_issued.values()),
            "pairing_codes_issued": sum(self._pairing_codes_issued.values()),
            "pairings": len(self.pairings),
            "inbound": len(self.inbound),
            "accounts": per_account,
        }
