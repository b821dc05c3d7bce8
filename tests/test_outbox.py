"""The in-memory outbox index: what waits for the network, in acceptance order."""

from __future__ import annotations

from dataclasses import replace

from node.events import EventKind, SessionEvent
from node.message_log import told_ahead
from node.outbox import Outbox
from node.storage import OutboxEntry
from registry import MessageStatus


def _entry(seq: int, status: MessageStatus = MessageStatus.QUEUED) -> OutboxEntry:
    return OutboxEntry(
        client_message_id=f"m-{seq}",
        to="+14155550199",
        text=f"hello {seq}",
        status=status,
        accepted_at_unix=1_800_000_000.0 + seq,
        seq=seq,
    )


def _ids(entries: list[OutboxEntry]) -> list[str]:
    return [entry.client_message_id for entry in entries]


class TestQueued:
    def test_in_seq_order_whatever_order_they_were_loaded_in(self) -> None:
        outbox = Outbox([_entry(3), _entry(1), _entry(2, MessageStatus.SENT), _entry(4)])
        assert _ids(outbox.queued()) == ["m-1", "m-3", "m-4"]
        assert outbox.next_seq() == 5

    def test_an_acknowledged_message_leaves_and_a_new_one_goes_last(self) -> None:
        outbox = Outbox([_entry(1), _entry(2)])
        advanced = outbox.advanced("m-1", "SENT")
        assert advanced is not None
        outbox.put(advanced)
        outbox.put(_entry(outbox.next_seq()))
        assert _ids(outbox.queued()) == ["m-2", "m-3"]
        assert outbox.advanced("m-1", "QUEUED") is None  # never backwards

    def test_an_older_message_put_late_takes_its_place(self) -> None:
        outbox = Outbox([_entry(1), _entry(5)])
        outbox.put(_entry(3))
        assert _ids(outbox.queued()) == ["m-1", "m-3", "m-5"]

    def test_an_update_keeps_its_place(self) -> None:
        outbox = Outbox([_entry(1), _entry(2)])
        outbox.put(replace(_entry(1), text=""))
        assert _ids(outbox.queued()) == ["m-1", "m-2"]


class TestKeepOnly:
    def test_forgets_the_rest_queued_or_not(self) -> None:
        outbox = Outbox([_entry(1, MessageStatus.READ), _entry(2), _entry(3)])
        outbox.keep_only([_entry(2)])
        assert outbox.get("m-1") is None and outbox.get("m-3") is None
        assert _ids(outbox.entries()) == ["m-2"]
        assert _ids(outbox.queued()) == ["m-2"]
        assert outbox.next_seq() == 4  # seqs are never handed out twice


class TestAcksToldAhead:
    """A new owner learns which acks the event log told that the message log missed."""

    def test_only_acks_beyond_the_stored_status_count(self) -> None:
        def ack(message_id: str, status: MessageStatus) -> SessionEvent:
            return SessionEvent(
                kind=EventKind.MESSAGE_ACK, at_unix=1.0, message_id=message_id, status=status
            )

        events = [
            ack("m-1", MessageStatus.SENT),
            ack("m-1", MessageStatus.READ),  # told, but m-1 is stored as SENT
            ack("m-2", MessageStatus.DELIVERED),  # stored as DELIVERED: nothing ahead
            ack("m-3", MessageStatus.SENT),
            ack("m-3", MessageStatus.DELIVERED),  # stored QUEUED: DELIVERED is the furthest
            ack("m-9", MessageStatus.READ),  # not in the outbox (forgotten): nothing to do
            SessionEvent(kind=EventKind.INBOUND_MESSAGE, at_unix=1.0, message_id="m-1"),
        ]
        entries = [
            _entry(1, MessageStatus.SENT),
            _entry(2, MessageStatus.DELIVERED),
            _entry(3),
        ]
        assert told_ahead(events, entries) == {
            "m-1": MessageStatus.READ,
            "m-3": MessageStatus.DELIVERED,
        }
