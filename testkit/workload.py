"""Sessions and traffic through a gateway: create, wait READY, and a load client that records
every acknowledged message and every failed call."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import grpc

from protos import session_pb2, session_pb2_grpc

READY = session_pb2.SESSION_STATE_READY
ASYNCIO_GENERATOR = "asyncio (grpc.aio, in the harness process)"
"""How results name the load generator of this module and the scenarios built on it."""
CALL_DEADLINE_SECONDS = 10.0
"""Each call's deadline: inside it the mesh must answer (a move is a delay, not an error)."""

SessionKey = tuple[str, str]
"""``(workspace_id, session_id)``."""


def account_of(key: SessionKey) -> str:
    """simnet's account name of a session (the sim driver uses ``<workspace>/<session>``)."""
    return f"{key[0]}/{key[1]}"


def plan_sessions(*, workspace_count: int, session_count: int) -> list[SessionKey]:
    """``session_count`` sessions spread round-robin over ``workspace_count`` workspaces."""
    return [(f"ws-{i % workspace_count}", f"s-{i}") for i in range(session_count)]


async def create_sessions(
    gateway_address: str, sessions: Sequence[SessionKey], *, concurrency: int = 32
) -> None:
    """CreateSession for each session through the gateway (idempotent), ``concurrency`` at once."""
    limit = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]

        async def create(key: SessionKey) -> None:
            async with limit:
                request = session_pb2.CreateSessionRequest(
                    workspace_id=key[0], session_id=key[1], phone_number="+14155550100"
                )
                await stub.CreateSession(request, timeout=CALL_DEADLINE_SECONDS)

        await asyncio.gather(*(create(key) for key in sessions))


async def session_states(
    gateway_address: str,
    sessions: Sequence[SessionKey],
    *,
    concurrency: int = 32,
    on_answer: Callable[[SessionKey, tuple[int, str]], None] | None = None,
) -> dict[SessionKey, tuple[int, str]]:
    """Each session's ``(state, node_id)`` as the gateway answers now; ``(-1, error)`` on a
    failed call. ``on_answer`` is given each answer as it arrives."""
    limit = asyncio.Semaphore(concurrency)
    found: dict[SessionKey, tuple[int, str]] = {}
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]

        async def get(key: SessionKey) -> None:
            async with limit:
                request = session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1])
                try:
                    got = await stub.GetSession(request, timeout=2)
                except grpc.aio.AioRpcError as error:
                    found[key] = (-1, f"{error.code().name}: {error.details()}")
                else:
                    found[key] = (got.state, got.node_id)
                if on_answer is not None:
                    on_answer(key, found[key])

        await asyncio.gather(*(get(key) for key in sessions))
    return found


async def wait_all_ready(
    gateway_address: str,
    sessions: Sequence[SessionKey],
    *,
    timeout_seconds: float,
    not_on: str = "",
    on_answer: Callable[[SessionKey, tuple[int, str]], None] | None = None,
) -> dict[SessionKey, str]:
    """Poll until every session is READY (and not on node ``not_on``); where each runs.
    ``on_answer`` is given every answer of the polls as it arrives (``session_states``).
    Raises ``TimeoutError`` naming what was still not ready at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    pending = list(sessions)
    placed: dict[SessionKey, str] = {}
    last: dict[SessionKey, tuple[int, str]] = {}
    while pending:
        last = await session_states(gateway_address, pending, on_answer=on_answer)
        for key, (state, node_id) in last.items():
            if state == READY and node_id and node_id != not_on:
                placed[key] = node_id
        pending = [key for key in pending if key not in placed]
        if not pending:
            break
        if time.monotonic() > deadline:
            summary = Counter(
                session_pb2.SessionState.Name(state) if state >= 0 else detail.split(":")[0]
                for state, detail in (last[key] for key in pending)
            )
            example = pending[0], last[pending[0]]
            raise TimeoutError(
                f"{len(pending)} of {len(sessions)} sessions not READY (or still on "
                f"{not_on or '-'}) after {timeout_seconds:.1f}s: {dict(summary)}; e.g. {example}"
            )
        await asyncio.sleep(0.05)
    return placed


@dataclass(frozen=True)
class FailedCall:
    """One call the client saw fail."""

    method: str
    session: SessionKey
    code: str
    details: str
    at_monotonic: float


@dataclass
class LoadReport:
    """What a load client saw."""

    acked: dict[str, set[str]] = field(default_factory=dict)
    """Per simnet account, every ``client_message_id`` the mesh acknowledged."""
    failures: list[FailedCall] = field(default_factory=list)
    calls: int = 0
    max_latency_seconds: float = 0.0

    @property
    def acked_count(self) -> int:
        """How many sends were acknowledged."""
        return sum(len(ids) for ids in self.acked.values())

    def failure_summary(self) -> str:
        """The failures grouped by method and code, with one example each."""
        groups: dict[tuple[str, str], list[FailedCall]] = {}
        for failure in self.failures:
            groups.setdefault((failure.method, failure.code), []).append(failure)
        return "; ".join(
            f"{method} {code} x{len(items)} (e.g. {items[0].session}: {items[0].details})"
            for (method, code), items in sorted(groups.items())
        )


class LoadClient:
    """``worker_count`` tasks calling SendMessage (unique ids) and GetSession through the
    gateway until stopped; use as ``async with LoadClient(...) as load:`` and read ``report``."""

    def __init__(
        self,
        gateway_address: str,
        sessions: Sequence[SessionKey],
        *,
        worker_count: int = 16,
        pause_seconds: float = 0.01,
    ) -> None:
        self._address = gateway_address
        self._sessions = list(sessions)
        self._worker_count = worker_count
        self._pause_seconds = pause_seconds
        self._ids = itertools.count()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        self.report = LoadReport()

    async def __aenter__(self) -> LoadClient:
        self._channel = grpc.aio.insecure_channel(self._address)
        stub = session_pb2_grpc.SessionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._tasks = [
            asyncio.create_task(self._work(stub, index), name=f"load-{index}")
            for index in range(self._worker_count)
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> LoadReport:
        """Let every in-flight call finish, then stop; the report."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        return self.report

    async def wait_for_acks(self, count: int, *, timeout_seconds: float = 30.0) -> None:
        """Wait until at least ``count`` more sends have been acknowledged."""
        target = self.report.acked_count + count
        deadline = time.monotonic() + timeout_seconds
        while self.report.acked_count < target:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {self.report.acked_count}/{target} acks; failures: "
                    + self.report.failure_summary()
                )
            await asyncio.sleep(0.02)

    async def _work(self, stub: session_pb2_grpc.SessionServiceStub, index: int) -> None:
        # Each worker walks the sessions from its own offset, so all sessions get traffic.
        for position in itertools.count(index * 7):
            if self._stopping.is_set():
                return
            key = self._sessions[position % len(self._sessions)]
            if position % 4 == 3:
                await self._get(stub, key)
            else:
                await self._send(stub, key)
            await asyncio.sleep(self._pause_seconds)

    async def _send(self, stub: session_pb2_grpc.SessionServiceStub, key: SessionKey) -> None:
        message_id = f"load-{next(self._ids)}"
        request = session_pb2.SendMessageRequest(
            workspace_id=key[0],
            session_id=key[1],
            client_message_id=message_id,
            to="+14155550199",
            text=f"load {message_id}",
        )
        started = time.monotonic()
        try:
            await stub.SendMessage(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            self._fail("SendMessage", key, error)
            return
        finally:
            self._count(started)
        self.report.acked.setdefault(account_of(key), set()).add(message_id)

    async def _get(self, stub: session_pb2_grpc.SessionServiceStub, key: SessionKey) -> None:
        request = session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1])
        started = time.monotonic()
        try:
            await stub.GetSession(request, timeout=CALL_DEADLINE_SECONDS)
        except grpc.aio.AioRpcError as error:
            self._fail("GetSession", key, error)
        finally:
            self._count(started)

    def _count(self, started: float) -> None:
        self.report.calls += 1
        self.report.max_latency_seconds = max(
            self.report.max_latency_seconds, time.monotonic() - started
        )

    def _fail(self, method: str, key: SessionKey, error: grpc.aio.AioRpcError) -> None:
        self.report.failures.append(
            FailedCall(method, key, error.code().name, error.details() or "", time.monotonic())
        )
