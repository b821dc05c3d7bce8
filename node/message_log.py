"""The on-disk form of a session's messages: an append-only log of JSON lines.

::

    {"a": {...OutboxEntry...}}        accepted (durable before the send is acknowledged)
    {"s": ["<client_message_id>", "DELIVERED"]}   a status the network acknowledged
    {"x": ["<client_message_id>", <seq>]}         withdrawn: that acceptance never counted

Replaying the lines in order gives every message's latest state. A crash can only tear the
last line (appends are sequential): a line that does not parse is dropped, and the log is
rewritten whole (compacted) whenever a node opens the session, so no new record is ever
written after a torn one. A compacted log holds one ``a`` line per message; a settled message
(sent, delivered, read or failed) keeps no text or recipient — only what its id needs to
answer a retried send — and is forgotten once it was accepted more than
``DEDUPE_WINDOW_SECONDS`` ago (:func:`retained`), so delivered messages do not accumulate
forever. A message the network has not acknowledged is kept, body and all, however old.

A withdrawal follows a record whose send was answered with an error although the record may
have reached the file (the storage stalled during its flush, or the node's lease lapsed while
it was written): the message was not acknowledged, so no reader may deliver it, and a retry
with the same id is accepted anew. It is written into the same file as its record only
(:class:`node.commit_io.FileTicket`), so it never reaches a newer owner's file.

Folders written before this format kept one ``outbox/<client_message_id>.json`` per message;
:func:`merge` reads both, and the first compaction retires the old files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from node.events import EventKind, SessionEvent
from node.storage_records import OutboxEntry
from registry import MessageStatus

DEDUPE_WINDOW_SECONDS = 24 * 3600
"""How long a settled message's id is remembered: a send retried with the same
``client_message_id`` within this long of the first is answered from the log, not sent again."""
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
"""An id that needs no JSON escaping."""
LOG_NAME = "messages.log"
"""The file, in the session's folder."""
LEGACY_OUTBOX = "outbox"
"""The folder of the format before the log (one JSON file per message)."""


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def accepted_record(entry: OutboxEntry) -> bytes:
    """The line that records an accepted message."""
    # Field by field, not dataclasses.asdict: its deep copy showed in profiles of sends.
    fields = {
        "client_message_id": entry.client_message_id,
        "to": entry.to,
        "text": entry.text,
        "status": entry.status.value,
        "accepted_at_unix": entry.accepted_at_unix,
        "seq": entry.seq,
        "accepted_by_node_id": entry.accepted_by_node_id,
    }
    return _line({"a": fields})


def status_record(client_message_id: str, status: MessageStatus) -> bytes:
    """The line that records a message's new status."""
    if _PLAIN_ID.fullmatch(client_message_id):  # always, for an id accepted by validate_id
        # Formatted, not json.dumps: the same bytes, at a third of the cost (three per send).
        return b'{"s":["%s","%s"]}\n' % (client_message_id.encode(), status.value.encode())
    return _line({"s": [client_message_id, status.value]})


def withdrawal_record(client_message_id: str, seq: int) -> bytes:
    """The line that withdraws the acceptance of ``client_message_id`` under ``seq``."""
    return _line({"x": [client_message_id, seq]})


def settled_form(entry: OutboxEntry) -> OutboxEntry:
    """``entry`` as it is kept once the network has it: without its text and recipient."""
    if entry.status is MessageStatus.QUEUED or not (entry.text or entry.to):
        return entry
    return replace(entry, text="", to="")


def retained(entries: Iterable[OutboxEntry], *, now_unix: float) -> list[OutboxEntry]:
    """The entries a compaction keeps: every unsettled one, and the settled ones accepted
    within ``DEDUPE_WINDOW_SECONDS`` of ``now_unix``."""
    oldest = now_unix - DEDUPE_WINDOW_SECONDS
    return [
        entry
        for entry in entries
        if entry.status is MessageStatus.QUEUED or entry.accepted_at_unix >= oldest
    ]


def compacted(entries: Iterable[OutboxEntry]) -> bytes:
    """A whole log holding just these entries (settled ones without their bodies)."""
    return b"".join(accepted_record(settled_form(entry)) for entry in entries)


def _entry_of(raw: Any) -> OutboxEntry | None:
    if not isinstance(raw, dict):
        return None
    try:
        return OutboxEntry(**{k: raw[k] for k in OutboxEntry.__dataclass_fields__ if k in raw})
    except (TypeError, ValueError):
        return None


def replay(data: bytes) -> dict[str, OutboxEntry]:
    """The messages a log holds, by client_message_id (a torn last line is dropped)."""
    entries: dict[str, OutboxEntry] = {}
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn tail: never acknowledged
        if not isinstance(record, dict):
            continue
        if "a" in record:
            entry = _entry_of(record["a"])
            if entry is not None:
                entries[entry.client_message_id] = entry
        elif "s" in record and isinstance(record["s"], list) and len(record["s"]) == 2:
            message_id, status_text = record["s"]
            status = MessageStatus.parse(str(status_text))
            entry = entries.get(str(message_id))
            if entry is not None and status is not None and status.progress > entry.status.progress:
                entries[entry.client_message_id] = replace(entry, status=status)
        elif "x" in record and isinstance(record["x"], list) and len(record["x"]) == 2:
            message_id, seq = record["x"]
            entry = entries.get(str(message_id))
            if entry is not None and entry.seq == seq:
                del entries[entry.client_message_id]
    return entries


def merge(logged: dict[str, OutboxEntry], legacy: Iterable[dict[str, Any]]) -> list[OutboxEntry]:
    """The log's messages plus those of the old per-message files, in ``seq`` order; of two
    records of one id, the one further along wins."""
    merged = dict(logged)
    for raw in legacy:
        entry = _entry_of(raw)
        if entry is None:
            continue
        known = merged.get(entry.client_message_id)
        if known is None or entry.status.progress > known.status.progress:
            merged[entry.client_message_id] = entry
    return sorted(merged.values(), key=lambda entry: entry.seq)


def told_ahead(
    events: Iterable[SessionEvent], entries: Iterable[OutboxEntry]
) -> dict[str, MessageStatus]:
    """The acks the event log already told that the message log does not hold yet: a
    previous owner stopped between the two writes (the event is written first). A new owner
    that hears such an ack again records it without telling it twice."""
    stored = {entry.client_message_id: MessageStatus(entry.status) for entry in entries}
    ahead: dict[str, MessageStatus] = {}
    for event in events:
        if event.kind is not EventKind.MESSAGE_ACK:
            continue
        told = MessageStatus.parse(event.status)
        current = stored.get(event.message_id)
        if told is None or current is None or told.progress <= current.progress:
            continue
        earlier = ahead.get(event.message_id)
        if earlier is None or told.progress > earlier.progress:
            ahead[event.message_id] = told
    return ahead
