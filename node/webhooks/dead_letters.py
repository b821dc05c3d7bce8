"""The on-disk forms of a session's webhook state: its cursor (``webhooks.cursor``, the last
event delivery confirmed, rewritten now and then) and its dead letters (``webhooks-dead.log``,
JSON lines, one per event the retries gave up on; rewritten when a replay delivers some)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeadLetter:
    """One event the retry schedule gave up on, with the body it was posted with."""

    event_id: str
    session_id: str
    sequence: int
    event_type: str
    event_at_unix: float
    dead_at_unix: float
    attempts: int
    last_error: str
    body: str


def dead_letter_line(letter: DeadLetter) -> bytes:
    """The log line of ``letter``."""
    return json.dumps(asdict(letter), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def parse_dead_letters(data: bytes) -> list[DeadLetter]:
    """The letters of a log, in order; lines that do not parse (a torn last one) are skipped,
    and of two lines for one event the later one wins."""
    letters: dict[str, DeadLetter] = {}
    for line in data.splitlines():
        try:
            letter = DeadLetter(**json.loads(line))
        except (ValueError, TypeError):
            continue
        letters.pop(letter.event_id, None)
        letters[letter.event_id] = letter
    return list(letters.values())


def cursor_record(sequence: int) -> bytes:
    """The cursor file saying every event through ``sequence`` is settled."""
    return json.dumps({"delivered": sequence}).encode()


def parse_cursor(data: bytes) -> int:
    """The sequence a cursor file holds; 0 for none or one that does not parse."""
    try:
        value = json.loads(data)["delivered"] if data else 0
    except (ValueError, TypeError, KeyError):
        return 0
    return value if isinstance(value, int) and value >= 0 else 0
