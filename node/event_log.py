"""The on-disk form of a session's events: an append-only log of JSON lines, one per event,
each with its sequence number (one more than the line before)::

    {"q":17,"k":"state_changed","t":1733080000.5,"state":"ready","previous_state":"authenticated"}

An event counts as emitted once its line is on disk: watchers hear of it only then, so a
watcher that resumes after a sequence (``WatchSession(after_sequence=…)``) finds every event
it missed in the log, on whichever node owns the session now. Like the message log it is
rewritten whole (compacted) when a node opens the session, so that node appends to a file of
its own (a torn last line or a former owner's late append cannot mix with its lines), and
again whenever it has grown by ``MAX_RETAINED_EVENTS``. Compaction keeps the newest
``MAX_RETAINED_EVENTS`` events of the last ``RETENTION_SECONDS``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields, replace
from typing import Any

from node.events import EventKind, SessionEvent

LOG_NAME = "events.log"
"""The file, in the session's folder."""
MAX_RETAINED_EVENTS = 5000
"""Events a compacted log keeps (the newest)."""
RETENTION_SECONDS = 7 * 24 * 3600
"""How old an event a compacted log keeps."""

_KINDS = {kind.value: kind for kind in EventKind}
_FIELDS = [f.name for f in fields(SessionEvent) if f.name not in ("kind", "at_unix", "sequence")]


def event_record(event: SessionEvent) -> bytes:
    """The line of ``event`` (its ``sequence`` set)."""
    record: dict[str, Any] = {"q": event.sequence, "k": event.kind.value, "t": event.at_unix}
    for name in _FIELDS:
        value = getattr(event, name)
        if value:
            record[name] = value
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _parse(line: bytes) -> SessionEvent | None:
    try:
        record = json.loads(line)
        values = {name: record[name] for name in _FIELDS if name in record}
        event = SessionEvent(kind=_KINDS[record["k"]], at_unix=float(record["t"]), **values)
        sequence = record["q"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(sequence, int) or sequence <= 0:
        return None
    return replace(event, sequence=sequence)


def parse_events(data: bytes) -> list[SessionEvent]:
    """The events of a log, in order. A line that does not parse (a torn last line) and
    lines whose sequence does not follow the one before are dropped."""
    events: list[SessionEvent] = []
    for line in data.splitlines():
        event = _parse(line)
        if event is None:
            continue
        if events and event.sequence != events[-1].sequence + 1:
            continue  # not the next one: a line of another writer; the log's order wins
        events.append(event)
    return events


def retained(events: Iterable[SessionEvent], *, now_unix: float) -> list[SessionEvent]:
    """What a compacted log keeps of ``events`` (in order): the newest ones of the retention
    window, and always the very last (it carries the sequence the next event follows)."""
    every = list(events)
    oldest = now_unix - RETENTION_SECONDS
    kept = [event for event in every[:-1] if event.at_unix >= oldest][-(MAX_RETAINED_EVENTS - 1) :]
    return kept + every[-1:]


def compacted(events: Iterable[SessionEvent]) -> bytes:
    """The whole log holding just ``events``."""
    return b"".join(event_record(event) for event in events)
