"""The checklist's own load, as a caller would run it through the gateway: sessions created a
wave at a time (each wave started at once), each followed until its QR code and then polled
with ``GetSession`` until READY; then a burst of sends and a burst of mixed calls.

Every call is recorded — its latency, or its status code when it failed — so a run answers
"did any caller see an error?" as well as "how fast?". Used by ``make bench`` (the seed-load
scenario, full size) and by ``tests/test_load_stability.py`` (reduced).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from protos import session_pb2, session_pb2_grpc
from testkit.workload import SessionKey, plan_sessions

_T = TypeVar("_T")

READY = session_pb2.SESSION_STATE_READY
PHONE_NUMBER = "+14155550100"
RECIPIENT = "+14155550199"
CALL_DEADLINE_SECONDS = 30.0
"""Each call's deadline, as in the issue's reproduction: a slow call is a latency; a call that
fails inside 30 s is an error the caller sees."""
_PAST_QR = frozenset({session_pb2.SESSION_STATE_AUTHENTICATED, session_pb2.SESSION_STATE_READY})


@dataclass(frozen=True)
class ChecklistSizes:
    """How big one run is."""

    session_count: int
    """Sessions created in all."""
    workspace_count: int
    """Workspaces they are spread over (round-robin)."""
    wave_size: int
    """Creates started at once; the next wave starts when this one is READY."""
    send_count: int
    """Concurrent SendMessage calls of the send burst (one per session)."""
    mixed_count: int
    """Calls of the mixed burst (creates, sends and reads)."""
    mixed_workers: int = 64
    """Callers of the mixed burst, each one call at a time."""
    poll_interval_seconds: float = 0.5
    """How often a caller asks GetSession whether its new session is READY."""
    ready_timeout_seconds: float = 120.0
    """How long a wave may take to become READY."""
    channel_count: int = 4
    """HTTP/2 connections to the gateway, used round-robin."""


@dataclass
class Calls:
    """Every call of one kind: latencies of the answered, status codes of the failed."""

    latencies_seconds: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        """How many failed."""
        return sum(self.failures.values())

    async def timed(self, call: Awaitable[_T]) -> _T | None:
        """Await ``call``, recording its latency or its failure (then None)."""
        started = time.perf_counter()
        try:
            result = await call
        except grpc.aio.AioRpcError as error:
            self.failures[error.code().name] += 1
            return None
        self.latencies_seconds.append(time.perf_counter() - started)
        return result


@dataclass
class ChecklistReport:
    """What the callers saw."""

    calls: dict[str, Calls] = field(default_factory=dict)
    """By method (``CreateSession``, ``GetSession``, ``WatchSession``, ``SendMessage``)."""
    create_to_qr_seconds: list[float] = field(default_factory=list)
    create_to_ready_seconds: list[float] = field(default_factory=list)
    send_burst_seconds: list[float] = field(default_factory=list)
    mixed_seconds: list[float] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    not_ready: int = 0
    """Sessions that were not READY by the deadline of their wave."""

    def of(self, method: str) -> Calls:
        """The record of ``method``'s calls."""
        return self.calls.setdefault(method, Calls())

    @property
    def failed_calls(self) -> int:
        """Calls that failed, every method together."""
        return sum(calls.failed for calls in self.calls.values())

    def failures(self) -> dict[str, dict[str, int]]:
        """Failed calls by method and status code."""
        return {m: dict(c.failures) for m, c in self.calls.items() if c.failures}


class _Stubs:
    """A few channels to the gateway, handed out round-robin."""

    def __init__(self, address: str, count: int) -> None:
        # A distinct option per channel: otherwise grpc shares one connection between them.
        self._channels = [
            grpc.aio.insecure_channel(address, options=[("sessionmesh.checklist.channel", index)])
            for index in range(count)
        ]
        self._stubs = itertools.cycle(
            [session_pb2_grpc.SessionServiceStub(channel) for channel in self._channels]  # type: ignore[no-untyped-call]
        )

    def next(self) -> session_pb2_grpc.SessionServiceStub:
        return next(self._stubs)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)


async def _watch_until_qr(
    stub: session_pb2_grpc.SessionServiceStub, key: SessionKey, report: ChecklistReport
) -> bool:
    """Follow the new session until its QR code is shown (or it is already past it)."""
    watch = stub.WatchSession(
        session_pb2.WatchSessionRequest(workspace_id=key[0], session_id=key[1]),
        timeout=CALL_DEADLINE_SECONDS,
    )
    calls = report.of("WatchSession")
    started = time.perf_counter()
    try:
        async for event in watch:
            kind = event.WhichOneof("event")
            if kind == "snapshot" and (event.snapshot.qr_code or event.snapshot.state in _PAST_QR):
                break
            if kind == "qr_rotated" and event.qr_rotated.code:
                break
            if kind == "state_changed" and event.state_changed.state in _PAST_QR:
                break
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            calls.failures[error.code().name] += 1
            return False
    finally:
        watch.cancel()
    calls.latencies_seconds.append(time.perf_counter() - started)
    return True


async def _create_and_follow(
    stubs: _Stubs, key: SessionKey, sizes: ChecklistSizes, report: ChecklistReport
) -> None:
    started = time.perf_counter()
    stub = stubs.next()
    request = session_pb2.CreateSessionRequest(
        workspace_id=key[0], session_id=key[1], phone_number=PHONE_NUMBER
    )
    created = await report.of("CreateSession").timed(
        stub.CreateSession(request, timeout=CALL_DEADLINE_SECONDS)
    )
    if created is None or not await _watch_until_qr(stub, key, report):
        return
    report.create_to_qr_seconds.append(time.perf_counter() - started)
    deadline = started + sizes.ready_timeout_seconds
    get = session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1])
    while time.perf_counter() < deadline:
        session = await report.of("GetSession").timed(
            stubs.next().GetSession(get, timeout=CALL_DEADLINE_SECONDS)
        )
        if session is not None and session.state == READY:
            report.create_to_ready_seconds.append(time.perf_counter() - started)
            return
        await asyncio.sleep(sizes.poll_interval_seconds)
    report.not_ready += 1


async def _at_once(calls: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Start every call at the same moment and wait for all of them."""
    start_together = asyncio.Event()

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        await start_together.wait()
        await call()

    tasks = [asyncio.create_task(one(call)) for call in calls]
    await asyncio.sleep(0)  # every task is parked on the event
    start_together.set()
    await asyncio.gather(*tasks)


def _send_request(key: SessionKey, message_id: str) -> session_pb2.SendMessageRequest:
    return session_pb2.SendMessageRequest(
        workspace_id=key[0],
        session_id=key[1],
        client_message_id=message_id,
        to=RECIPIENT,
        text=f"checklist {message_id}",
    )


async def _mixed(
    stubs: _Stubs, sessions: Sequence[SessionKey], sizes: ChecklistSizes, report: ChecklistReport
) -> None:
    remaining = itertools.count()
    new_ids = itertools.count()
    message_ids = itertools.count()

    async def worker(index: int) -> None:
        chooser = random.Random(index)  # a deterministic mix per worker
        while next(remaining) < sizes.mixed_count:
            stub, draw = stubs.next(), chooser.random()
            key = chooser.choice(sessions)
            started = time.perf_counter()
            if draw < 0.1:
                number = next(new_ids)
                request = session_pb2.CreateSessionRequest(
                    workspace_id=key[0], session_id=f"mixed-{number}", phone_number=PHONE_NUMBER
                )
                answer: Any = await report.of("CreateSession").timed(
                    stub.CreateSession(request, timeout=CALL_DEADLINE_SECONDS)
                )
            elif draw < 0.7:
                send = _send_request(key, f"mixed-{next(message_ids)}")
                answer = await report.of("SendMessage").timed(
                    stub.SendMessage(send, timeout=CALL_DEADLINE_SECONDS)
                )
            else:
                get = session_pb2.GetSessionRequest(workspace_id=key[0], session_id=key[1])
                answer = await report.of("GetSession").timed(
                    stub.GetSession(get, timeout=CALL_DEADLINE_SECONDS)
                )
            if answer is not None:
                report.mixed_seconds.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(index) for index in range(sizes.mixed_workers)))


async def one_at_a_time(
    gateway_address: str, *, count: int, workspace_id: str = "alone"
) -> ChecklistReport:
    """The baseline of the bursts: ``count`` sessions created (each followed to its QR code
    and polled to READY) and then sent to, one call at a time."""
    report = ChecklistReport()
    sizes = ChecklistSizes(
        session_count=count,
        workspace_count=1,
        wave_size=1,
        send_count=count,
        mixed_count=0,
        poll_interval_seconds=0.02,
        channel_count=1,
    )
    stubs = _Stubs(gateway_address, 1)
    try:
        keys = [(workspace_id, f"alone-{index}") for index in range(count)]
        for key in keys:
            await _create_and_follow(stubs, key, sizes, report)
        sends = report.of("SendMessage")
        for index, key in enumerate(keys):
            started = time.perf_counter()
            answer = await sends.timed(
                stubs.next().SendMessage(
                    _send_request(key, f"alone-{index}"), timeout=CALL_DEADLINE_SECONDS
                )
            )
            if answer is not None:
                report.send_burst_seconds.append(time.perf_counter() - started)
    finally:
        await stubs.close()
    return report


async def run_checklist(
    gateway_address: str,
    sizes: ChecklistSizes,
    *,
    on_phase: Callable[[str], Awaitable[None]] | None = None,
) -> ChecklistReport:
    """Run the checklist's load through the gateway at ``gateway_address`` (see the module
    docstring). ``on_phase(name)`` is awaited as each phase ends (``creates``, ``sends``,
    ``mixed``), e.g. to read the mesh's CPU counters."""
    report = ChecklistReport()
    sessions = plan_sessions(
        workspace_count=sizes.workspace_count, session_count=sizes.session_count
    )
    stubs = _Stubs(gateway_address, sizes.channel_count)
    try:
        started = time.perf_counter()
        for first in range(0, len(sessions), sizes.wave_size):
            wave = sessions[first : first + sizes.wave_size]
            await _at_once(
                [
                    lambda key=key: _create_and_follow(stubs, key, sizes, report)  # type: ignore[misc]
                    for key in wave
                ]
            )
        report.phase_seconds["creates"] = time.perf_counter() - started
        if on_phase is not None:
            await on_phase("creates")

        started = time.perf_counter()
        sends = report.of("SendMessage")

        async def send(key: SessionKey, index: int) -> None:
            call_started = time.perf_counter()
            answer = await sends.timed(
                stubs.next().SendMessage(
                    _send_request(key, f"burst-{index}"), timeout=CALL_DEADLINE_SECONDS
                )
            )
            if answer is not None:
                report.send_burst_seconds.append(time.perf_counter() - call_started)

        await _at_once(
            [
                lambda key=key, index=index: send(key, index)  # type: ignore[misc]
                for index, key in enumerate(sessions[: sizes.send_count])
            ]
        )
        report.phase_seconds["sends"] = time.perf_counter() - started
        if on_phase is not None:
            await on_phase("sends")

        started = time.perf_counter()
        await _mixed(stubs, sessions, sizes, report)
        report.phase_seconds["mixed"] = time.perf_counter() - started
        if on_phase is not None:
            await on_phase("mixed")
    finally:
        await stubs.close()
    return report
