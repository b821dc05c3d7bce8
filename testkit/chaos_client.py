"""The client of a chaos run: it creates sessions, sends, reads and watches through the gateway
the way a careful backend does, and records what it was told.

- **Sends** go to random sessions, each with a new ``client_message_id``. A send that fails
  (``UNAVAILABLE``, a deadline) is not forgotten: it is tried again later *with the same id*,
  as the API asks of a caller that did not get an answer. :meth:`ChaosClient.finish` retries
  every unanswered one after the faults end, so in the end every message has a final answer.
- **Creates** add a session now and then, retried (idempotent) until answered.
- **Reads**: GetSession between sends.
- **Watches**: WatchSession streams on random sessions, opened again whenever one ends.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from protos import session_pb2, session_pb2_grpc
from testkit.workload import CALL_DEADLINE_SECONDS, LoadReport, SessionKey, account_of

RETRY_PAUSE_SECONDS = 0.2
FINAL_ANSWER_TIMEOUT_SECONDS = 90.0
"""How long :meth:`ChaosClient.finish` may retry the unanswered sends after the faults."""
_RECIPIENT = "+14155550199"


@dataclass
class _Pending:
    key: SessionKey
    message_id: str
    attempts: int = 0


@dataclass
class ClientFigures:
    """What the client saw, for the report."""

    sends: int = 0
    """SendMessage calls made (first tries and retries)."""
    messages: int = 0
    """Distinct messages (client_message_ids)."""
    acked_first_try: int = 0
    retried_messages: int = 0
    """Messages that needed more than one call for their answer."""
    failed_calls: Counter[str] = field(default_factory=Counter)
    """Failed calls by status code (each one retried later)."""
    gets: int = 0
    creates: int = 0
    watch_streams: int = 0
    watch_events: int = 0
    send_latencies: list[float] = field(default_factory=list)
    """Seconds to a successful SendMessage answer."""

    def latency(self, share: float) -> float:
        """The ``share`` quantile of the send latencies (0 when none)."""
        ordered = sorted(self.send_latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class ChaosClient:
    """See the module docstring; ``start``, let it run, ``stop_traffic``, then ``finish``."""

    def __init__(
        self,
        gateway_address: str,
        sessions: list[SessionKey],
        *,
        rng: random.Random,
        send_workers: int,
        watchers: int,
        create_every_seconds: float,
    ) -> None:
        self._address = gateway_address
        self.sessions = list(sessions)
        """Every session with a successful CreateSession (those created here included)."""
        self.created_here: list[SessionKey] = []
        self.unanswered_creates: list[SessionKey] = []
        self._rng = rng
        self._send_workers = send_workers
        self._watchers = watchers
        self._create_every_seconds = create_every_seconds
        self._ids = itertools.count()
        self._unanswered: dict[str, _Pending] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        self._stub: session_pb2_grpc.SessionServiceStub | None = None
        self.report = LoadReport()
        self.figures = ClientFigures()

    @property
    def unanswered(self) -> int:
        """Messages without a final answer yet."""
        return len(self._unanswered)

    async def start(self) -> None:
        """Open the channel and start every task."""
        self._channel = grpc.aio.insecure_channel(self._address)
        self._stub = session_pb2_grpc.SessionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._tasks = [
            *(
                asyncio.create_task(self._send_loop(), name="chaos-send")
                for _ in range(self._send_workers)
            ),
            *(
                asyncio.create_task(self._watch_loop(), name="chaos-watch")
                for _ in range(self._watchers)
            ),
            asyncio.create_task(self._create_loop(), name="chaos-create"),
        ]

    async def stop_traffic(self) -> None:
        """Let the calls in flight end, then stop sending, creating and watching."""
        self._stopping.set()
        for task in self._tasks:
            if task.get_name() == "chaos-watch":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def finish(self) -> list[str]:
        """Retry every unanswered send (same id) until answered or the deadline; close. The
        ids still without an answer (none, when the mesh keeps its promise)."""
        deadline = time.monotonic() + FINAL_ANSWER_TIMEOUT_SECONDS
        limit = asyncio.Semaphore(16)
        while self._unanswered and time.monotonic() < deadline:
            batch = list(self._unanswered.values())
            self._unanswered.clear()
            await asyncio.gather(*(self._send_limited(pending, limit) for pending in batch))
            if self._unanswered:
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        return sorted(self._unanswered)

    # -- sends ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while not self._stopping.is_set():
            pending = self._next_pending()
            if pending is None:
                key = self._rng.choice(self.sessions)
                pending = _Pending(key, f"chaos-{next(self._ids)}")
                self.figures.messages += 1
            await self._send(pending)
            if self._rng.random() < 0.2:
                await self._get(self._rng.choice(self.sessions))
            await asyncio.sleep(0.01)

    def _next_pending(self) -> _Pending | None:
        """The oldest unanswered send, taken out while it is retried (never two calls for one
        id at once); None most of the time, so new sends go on during an outage."""
        if not self._unanswered or self._rng.random() < 0.5:
            return None
        message_id = next(iter(self._unanswered))
        return self._unanswered.pop(message_id)

    async def _send_limited(self, pending: _Pending, limit: asyncio.Semaphore) -> None:
        async with limit:
            await self._send(pending)

    async def _send(self, pending: _Pending) -> None:
        assert self._stub is not None
        key, message_id = pending.key, pending.message_id
        request = session_pb2.SendMessageRequest(
            workspace_id=key[0],
            session_id=key[1],
            client_message_id=message_id,
            to=_RECIPIENT,
            text=f"chaos {message_id}",
        )
        pending.attempts += 1
        self.figures.sends += 1
        started = time.monotonic()
        try:
            await self._stub.SendMessage(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            self.figures.failed_calls[error.code().name] += 1
            self._unanswered[message_id] = pending  # tried again later, same id
            return
        self.figures.send_latencies.append(time.monotonic() - started)
        self.report.acked.setdefault(account_of(key), set()).add(message_id)
        if pending.attempts == 1:
            self.figures.acked_first_try += 1
        else:
            self.figures.retried_messages += 1

    async def _get(self, key: SessionKey) -> None:
        assert self._stub is not None
        self.figures.gets += 1
        request = session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1])
        try:
            await self._stub.GetSession(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            self.figures.failed_calls[f"{error.code().name} (GetSession)"] += 1

    # -- creates and watches -------------------------------------------------------------

    async def _create_loop(self) -> None:
        assert self._stub is not None
        for index in itertools.count():
            try:
                async with asyncio.timeout(self._create_every_seconds):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            workspace = self._rng.choice(self.sessions)[0]
            key = (workspace, f"chaos-new-{index}")
            request = session_pb2.CreateSessionRequest(
                workspace_id=key[0], session_id=key[1], phone_number="+14155550100"
            )
            give_up_at = time.monotonic() + FINAL_ANSWER_TIMEOUT_SECONDS
            while True:  # idempotent: retried until answered, also past the stop
                try:
                    await self._stub.CreateSession(request, timeout=CALL_DEADLINE_SECONDS)
                    break
                except grpc.aio.AioRpcError as error:
                    self.figures.failed_calls[f"{error.code().name} (CreateSession)"] += 1
                    if time.monotonic() > give_up_at:
                        self.unanswered_creates.append(key)
                        return
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
            self.figures.creates += 1
            self.created_here.append(key)
            self.sessions.append(key)

    async def _watch_loop(self) -> None:
        assert self._stub is not None
        while not self._stopping.is_set():
            key = self._rng.choice(self.sessions)
            request = session_pb2.WatchSessionRequest(workspace_id=key[0], session_id=key[1])
            self.figures.watch_streams += 1
            call = self._stub.WatchSession(request)
            try:
                async for _ in call:
                    self.figures.watch_events += 1
                    if self._rng.random() < 0.02:
                        break  # move on to another session now and then
            except grpc.aio.AioRpcError:
                pass  # the stream ended with the session's move: watch again
            finally:
                call.cancel()
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
