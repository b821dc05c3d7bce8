"""Scenario 6: webhooks — how many session events per second the mesh delivers to a local
receiver, and how long an event takes from being emitted to the receiver's 2xx.

A process mesh (etcd, simnet, nodes, a gateway) with the mesh default webhook pointing at a
real HTTP receiver in a process of its own (``testkit.webhook_sink``: a threaded
``http.server`` that verifies every Standard Webhooks signature and logs what arrived).
Every message sent makes four events (``message.accepted``, ``.sent``, ``.delivered``,
``.read``).

- **Throughput**: ``burst_messages`` messages are sent over ``session_count`` sessions as
  fast as the gateway takes them; ``webhook_events_per_second`` = distinct events delivered /
  (last delivery - first send). Delivery is one event in flight per session, so the figure
  grows with sessions, not with one session's round trip.
- **Latency** at half that rate: messages are sent at a pace that makes half the measured
  event rate for ``latency_seconds``; each event's latency is its arrival (wall clock) minus
  its ``timestamp`` (when the node emitted it, same clock): ``webhook_p50_ms`` and
  ``webhook_p99_ms``.
- **Baseline**, in the same run: the same receiver fed directly by one httpx client (the
  library the nodes post with) sending signed bodies with as many requests in flight as
  there are sessions (``receiver_alone_events_per_second``): what one process can post to
  that receiver at all; ``webhook_vs_receiver_alone`` compares the mesh with it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
from standardwebhooks import Webhook

from bench.stats import SAMPLES_KEY, latency_sample, percentile_ms, ratio
from node.webhooks.sender import CLIENT_SHARDS
from protos import session_pb2, session_pb2_grpc, webhook_pb2, webhook_pb2_grpc
from registry.webhooks import new_secret
from testkit import HOST, MeshSettings, free_port, running_process_mesh, wait_listening

READY = session_pb2.SESSION_STATE_READY
EVENTS_PER_MESSAGE = 4


@dataclass(frozen=True)
class WebhookSizes:
    """How big scenario 6 runs."""

    node_count: int
    session_count: int
    burst_messages: int
    latency_seconds: float
    baseline_requests: int
    timeout_seconds: float


FULL_WEBHOOK_SIZES = WebhookSizes(
    node_count=2,
    session_count=32,
    burst_messages=600,
    latency_seconds=6.0,
    baseline_requests=2000,
    timeout_seconds=90.0,
)
SMOKE_WEBHOOK_SIZES = WebhookSizes(
    node_count=1,
    session_count=4,
    burst_messages=40,
    latency_seconds=1.5,
    baseline_requests=200,
    timeout_seconds=30.0,
)


class SinkLog:
    """What the sink process has logged so far, read incrementally."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self.records: list[dict[str, Any]] = []

    def refresh(self) -> list[dict[str, Any]]:
        """Read the lines added since the last call; every record so far."""
        if self._path.exists():
            with self._path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
            complete = data.rfind(b"\n") + 1
            self._offset += complete
            self.records.extend(json.loads(line) for line in data[:complete].splitlines())
        return self.records

    def message_events(self, since: int) -> list[dict[str, Any]]:
        """The distinct message events answered 200 after record ``since``, first arrivals."""
        seen: dict[str, dict[str, Any]] = {}
        for each in self.refresh()[since:]:
            if each["type"].startswith("message.") and each["status"] == 200:
                seen.setdefault(each["id"], each)
        return list(seen.values())


async def _wait_for_events(sink: SinkLog, since: int, count: int, within_seconds: float) -> float:
    """Wait until ``count`` distinct message events arrived after record ``since``; when the
    last did (wall clock)."""
    deadline = time.monotonic() + within_seconds
    while True:
        events = sink.message_events(since)
        if len(events) >= count:
            return float(max(each["received_at"] for each in events))
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(events)} of {count} webhook events within {within_seconds:g} s"
            )
        await asyncio.sleep(0.05)


async def _baseline(url: str, secret: str, sizes: WebhookSizes) -> float:
    """Events per second the receiver takes from a plain httpx client, signed the same way."""
    signer = Webhook(secret)
    body = json.dumps({"type": "bench.baseline", "data": {"x": "y" * 64}})
    queue = list(range(sizes.baseline_requests))
    clients = [httpx.AsyncClient(trust_env=False, timeout=10) for _ in range(CLIENT_SHARDS)]
    try:

        async def worker(client: httpx.AsyncClient) -> None:
            while queue:
                number = queue.pop()
                now = time.time()
                headers = {
                    "webhook-id": f"evt_baseline_{number}",
                    "webhook-timestamp": str(int(now)),
                    "webhook-signature": signer.sign(
                        f"evt_baseline_{number}", datetime.fromtimestamp(now, tz=UTC), body
                    ),
                    "content-type": "application/json",
                }
                await client.post(url, content=body, headers=headers)

        started = time.monotonic()
        await asyncio.gather(*(
            worker(clients[n % CLIENT_SHARDS]) for n in range(sizes.session_count)
        ))  # fmt: skip
        return sizes.baseline_requests / (time.monotonic() - started)
    finally:
        for client in clients:
            await client.aclose()


async def run_webhook_scenario(sizes: WebhookSizes) -> dict[str, Any]:
    """Run scenario 6 at ``sizes``; its results."""
    secret = new_secret()
    settings = MeshSettings(
        node_count=sizes.node_count,
        extra_node_flags=("--webhook-allow-private",),
        gateway_flags=("--webhook-allow-private",),
    )
    with tempfile.TemporaryDirectory(prefix="sessionmesh-bench-webhooks-") as state_dir:
        port = free_port()
        url = f"http://{HOST}:{port}/hooks"
        sink = SinkLog(Path(state_dir) / "sink.jsonl")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "testkit.webhook_sink", "--port", str(port),
            "--secret", secret, "--out", str(Path(state_dir) / "sink.jsonl"),
        )  # fmt: skip
        try:
            await wait_listening(f"{HOST}:{port}", timeout_seconds=10)
            async with (
                running_process_mesh(Path(state_dir) / "mesh", settings) as mesh,
                grpc.aio.insecure_channel(mesh.gateway_address) as channel,
            ):
                results = await _run_in_mesh(
                    channel, url=url, secret=secret, sink=sink, sizes=sizes,
                    cpu_seconds=mesh.cpu_seconds,
                )  # fmt: skip
            baseline = await _baseline(url, secret, sizes)
        finally:
            process.terminate()
            async with asyncio.timeout(10):
                await process.wait()
        unverified = sum(1 for each in sink.refresh() if not each["verified"])
    results.update(
        receiver_alone_events_per_second=round(baseline, 1),
        webhook_vs_receiver_alone=ratio(results["webhook_events_per_second"], baseline),
        unverified_requests=unverified,
        sessions=sizes.session_count,
        node_count=sizes.node_count,
    )
    return results


async def _run_in_mesh(
    channel: grpc.aio.Channel,
    *,
    url: str,
    secret: str,
    sink: SinkLog,
    sizes: WebhookSizes,
    cpu_seconds: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    admin = webhook_pb2_grpc.WebhookAdminServiceStub(channel)  # type: ignore[no-untyped-call]
    types = ["message.accepted", "message.sent", "message.delivered", "message.read"]
    await admin.SetDefaultWebhook(
        webhook_pb2.SetDefaultWebhookRequest(url=url, event_types=types, secret=secret),
        timeout=10,
    )
    stub = session_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
    sessions = [(f"ws-hook-{n}", f"s-{n}") for n in range(sizes.session_count)]
    await asyncio.gather(*(
        stub.CreateSession(
            session_pb2.CreateSessionRequest(
                workspace_id=ws, session_id=sid, phone_number=f"+1415555{n:04d}"
            ),
            timeout=30,
        )
        for n, (ws, sid) in enumerate(sessions)
    ))  # fmt: skip
    await _wait_ready(stub, sessions, sizes.timeout_seconds)
    return await _measure(stub, sink, sessions, sizes, cpu_seconds)


async def _wait_ready(
    stub: session_pb2_grpc.SessionServiceStub,
    sessions: list[tuple[str, str]],
    within_seconds: float,
) -> None:
    deadline = time.monotonic() + within_seconds
    waiting = list(sessions)
    while waiting:
        replies = await asyncio.gather(*(
            stub.GetSession(session_pb2.GetSessionRequest(workspace_id=ws, session_id=sid),
                            timeout=10)
            for ws, sid in waiting
        ))  # fmt: skip
        waiting = [key for key, got in zip(waiting, replies, strict=True) if got.state != READY]
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} sessions not READY within {within_seconds:g} s")
        await asyncio.sleep(0.1)


async def _send(
    stub: session_pb2_grpc.SessionServiceStub, key: tuple[str, str], message_id: str
) -> None:
    await stub.SendMessage(
        session_pb2.SendMessageRequest(
            workspace_id=key[0], session_id=key[1], client_message_id=message_id,
            to="+14155550199", text="bench",
        ),
        timeout=30,
    )  # fmt: skip


async def _measure(
    stub: session_pb2_grpc.SessionServiceStub,
    sink: SinkLog,
    sessions: list[tuple[str, str]],
    sizes: WebhookSizes,
    cpu_seconds: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    # Throughput: a burst over every session, as fast as the gateway takes it.
    since = len(sink.refresh())
    cpu_before = cpu_seconds()
    started = time.time()
    per_session = max(1, sizes.burst_messages // len(sessions))
    await asyncio.gather(*(
        _send(stub, key, f"burst-{n}")
        for key in sessions for n in range(per_session)
    ))  # fmt: skip
    expected = per_session * len(sessions) * EVENTS_PER_MESSAGE
    last = await _wait_for_events(sink, since, expected, sizes.timeout_seconds)
    rate = expected / (last - started)
    cpu_after = cpu_seconds()
    node_cpu = sum(
        cpu_after[name] - cpu_before.get(name, 0.0)
        for name in cpu_after
        if name.startswith("node-")
    )
    # Latency at half that rate.
    since = len(sink.refresh())
    message_rate = rate / 2 / EVENTS_PER_MESSAGE
    count = max(len(sessions), int(message_rate * sizes.latency_seconds))
    pace = 1.0 / message_rate
    sends = []
    begun = time.monotonic()
    for n in range(count):
        await asyncio.sleep(max(0.0, begun + n * pace - time.monotonic()))
        sends.append(asyncio.ensure_future(_send(stub, sessions[n % len(sessions)], f"paced-{n}")))
    await asyncio.gather(*sends)
    await _wait_for_events(sink, since, count * EVENTS_PER_MESSAGE, sizes.timeout_seconds)
    latencies = [
        max(0.0, each["received_at"] - _unix(each["timestamp"]))
        for each in sink.message_events(since)
    ]
    return {
        "webhook_events_per_second": round(rate, 1),
        "burst_events": expected,
        "node_cpu_ms_per_event": round(node_cpu * 1000 / expected, 3),
        "burst_cpu_seconds": {
            name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2) for name in cpu_after
        },
        "paced_events_per_second": round(
            count * EVENTS_PER_MESSAGE / (time.monotonic() - begun), 1
        ),
        "paced_events": len(latencies),
        "webhook_p50_ms": percentile_ms(latencies, 0.5),
        "webhook_p99_ms": percentile_ms(latencies, 0.99),
        # Every paced event's latency, bounded, for the figures (kept out of the JSON).
        SAMPLES_KEY: {"event": latency_sample(latencies)},
    }


def _unix(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
