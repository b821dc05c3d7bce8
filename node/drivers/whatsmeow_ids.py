"""Which WhatsApp message id each mesh ``client_message_id`` was sent as, in the session folder.

neonize 0.5 does not let the sender choose a message's WhatsApp id, so the driver records the
id WhatsApp gave it. Receipts name WhatsApp ids, and the next owner after a failover reads the
same file: a message it is asked to send again that was already handed to the network is
recognised and acknowledged instead of sent twice. One JSON line per message, appended and
flushed to disk; rewritten with the newest :data:`MAX_REMEMBERED_MESSAGES` when it grows past
twice that. A crash between WhatsApp's answer and the append leaves the message unrecorded:
it is sent again (at least once, as any client that cannot choose its message ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

IDS_FILE = "whatsmeow-ids.log"
MAX_REMEMBERED_MESSAGES = 10_000
"""Messages whose WhatsApp id is kept (receipts for older ones are ignored)."""

_T = TypeVar("_T")


class MessageIdMap:
    """The ``client_message_id`` ↔ WhatsApp id pairs of one session."""

    def __init__(self, path: Path, *, executor: Executor) -> None:
        self._path = path
        self._executor = executor
        self._by_client: OrderedDict[str, str] = OrderedDict()
        self._by_wa: dict[str, str] = {}
        self._lines = 0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read the pairs recorded by this or a previous owner (a torn last line is skipped)."""
        pairs, lines = await self._off_loop(_read, self._path)
        for client_id, wa_id in pairs:
            self._remember(client_id, wa_id)
        self._lines = lines

    def wa_id_of(self, client_message_id: str) -> str | None:
        """The WhatsApp id a message was sent as, or None if it never was."""
        return self._by_client.get(client_message_id)

    def client_id_of(self, wa_id: str) -> str | None:
        """The mesh's id of a message sent as ``wa_id``, or None."""
        return self._by_wa.get(wa_id)

    async def record(self, client_message_id: str, wa_id: str) -> None:
        """Remember a sent message, on disk before this returns."""
        self._remember(client_message_id, wa_id)
        async with self._lock:
            line = json.dumps({"c": client_message_id, "w": wa_id}) + "\n"
            await self._off_loop(_append, self._path, line)
            self._lines += 1
            if self._lines > 2 * MAX_REMEMBERED_MESSAGES:
                pairs = list(self._by_client.items())
                await self._off_loop(_rewrite, self._path, pairs)
                self._lines = len(pairs)

    async def forget(self) -> None:
        """Delete the file (the session is being deleted)."""
        self._by_client.clear()
        self._by_wa.clear()
        await self._off_loop(_remove, self._path)

    def _remember(self, client_id: str, wa_id: str) -> None:
        self._by_client[client_id] = wa_id
        self._by_client.move_to_end(client_id)
        self._by_wa[wa_id] = client_id
        while len(self._by_client) > MAX_REMEMBERED_MESSAGES:
            _, oldest = self._by_client.popitem(last=False)
            self._by_wa.pop(oldest, None)

    async def _off_loop(self, function: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)


def _read(path: Path) -> tuple[list[tuple[str, str]], int]:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], 0
    pairs = []
    lines = raw.splitlines()
    for line in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            pairs.append((str(record["c"]), str(record["w"])))
    return pairs, len(lines)


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(line)
        file.flush()
        os.fsync(file.fileno())


def _rewrite(path: Path, pairs: list[tuple[str, str]]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.writelines(json.dumps({"c": c, "w": w}) + "\n" for c, w in pairs)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
