"""Webhooks: every session event, from the durable event log, POSTed signed (Standard Webhooks,
verified here with the ``standardwebhooks`` library by a real HTTP receiver), retried with
backoff (``Retry-After`` honoured), dead-lettered and replayed — and, across a kill -9 of the
owner, delivered at least once and exactly once after dedupe by ``webhook-id``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from node.event_log import parse_events
from node.events import EventKind, SessionEvent
from node.webhooks.breaker import CircuitBreaker
from node.webhooks.payloads import body, event_id, session_key, webhook_type
from node.webhooks.schedule import (
    DEFAULT_SCHEDULE,
    Outcome,
    outcome_of,
    parse_schedule,
    retry_after_seconds,
)
from protos import session_pb2 as pb
from protos import session_pb2_grpc, webhook_pb2, webhook_pb2_grpc
from registry import InvalidInput, PermissionDenied
from registry.auth import TokenAccess, issue_token
from registry.webhooks import (
    EVENT_TYPES,
    WebhookRecord,
    check_destination,
    is_public,
    new_record,
    new_secret,
    parse_url,
    validate_secret,
)
from simnet import SimNet
from testkit import (
    MeshSettings,
    Received,
    WebhookReceiver,
    always,
    eventually,
    running_node,
    running_process_mesh,
    running_receiver,
    running_simnet,
)
from tests.calls import create, wait_state

WORKSPACE = "ws-hooks"
FAST_RETRIES = ("--webhook-allow-private", "--webhook-retry-schedule", "0.1s,0.1s")
"""Local receivers, and three attempts 0.1 s apart."""


def _ids_in_order(received: list[Received]) -> list[str]:
    return [each.event_id for each in received]


class TestPayloads:
    def test_every_event_kind_has_its_webhook_type(self) -> None:
        def of(kind: EventKind, status: str = "") -> str | None:
            return webhook_type(SessionEvent(kind=kind, at_unix=1.0, status=status))

        assert of(EventKind.STATE_CHANGED) == "session.state_changed"
        assert of(EventKind.QR_ROTATED) == "session.qr"
        assert of(EventKind.SESSION_MOVED) == "session.moved"
        assert of(EventKind.INBOUND_MESSAGE) == "message.received"
        acks = {s: of(EventKind.MESSAGE_ACK, s) for s in ("QUEUED", "SENT", "DELIVERED", "READ")}
        assert acks == {
            "QUEUED": "message.accepted",
            "SENT": "message.sent",
            "DELIVERED": "message.delivered",
            "READ": "message.read",
        }
        assert of(EventKind.MESSAGE_ACK, "FAILED") == "message.failed"
        others = {"message.failed", "message.received", "session.state_changed", "session.qr",
                  "session.moved"}  # fmt: skip
        assert set(EVENT_TYPES) == {*acks.values(), *others}

    def test_a_body_has_the_documented_keys_and_ids_are_stable(self) -> None:
        event = SessionEvent(
            kind=EventKind.STATE_CHANGED, at_unix=1733040000.25, state="disconnected",
            previous_state="ready", reason="logged_out", sequence=7,
        )  # fmt: skip
        document = json.loads(
            body(event, event_type="session.state_changed", workspace_id="w", session_id="s")
        )
        assert document == {
            "type": "session.state_changed",
            "timestamp": "2024-12-01T08:00:00.250Z",
            "workspace_id": "w",
            "session_id": "s",
            "sequence": 7,
            "data": {"state": "DISCONNECTED", "previous_state": "READY", "reason": "logged_out"},
        }
        key = session_key("w", "s", 12.5)
        assert key == session_key("w", "s", 12.5) != session_key("w", "s", 13.0)
        assert event_id(key, 7) == f"evt_{key}_7"


class TestRetries:
    def test_the_schedule_parses_and_the_default_stays_within_a_day(self) -> None:
        assert parse_schedule("5s, 2m,1h,250ms,3").delays == (5.0, 120.0, 3600.0, 0.25, 3.0)
        assert 20 * 3600 <= sum(DEFAULT_SCHEDULE.delays) <= 24 * 3600
        assert DEFAULT_SCHEDULE.attempts == 10
        for bad in ("5x", "-1s", "1d", "99h"):
            with pytest.raises(InvalidInput):
                parse_schedule(bad)
        delays = [DEFAULT_SCHEDULE.delay(0) for _ in range(200)]
        assert 4.0 <= min(delays) < max(delays) <= 6.0  # jittered ±20 %

    def test_which_answers_are_retried(self) -> None:
        assert outcome_of(200) is outcome_of(204) is Outcome.DELIVERED
        for status in (408, 409, 425, 429, 500, 502, 503, 0, 301):
            assert outcome_of(status) is Outcome.RETRY, status
        for status in (400, 401, 403, 404, 410, 413, 422):
            assert outcome_of(status) is Outcome.REFUSED, status

    def test_retry_after_in_seconds_or_as_a_date_only_on_429_and_503(self) -> None:
        assert retry_after_seconds(503, "7") == 7.0
        assert retry_after_seconds(429, "Wed, 21 Oct 2015 07:28:10 GMT", now_unix=1445412480) == 10
        assert retry_after_seconds(500, "7") is None
        assert retry_after_seconds(503, "soon") is None
        assert DEFAULT_SCHEDULE.wait_before(0, 3.0) == 3.0
        assert DEFAULT_SCHEDULE.wait_before(0, 10**9) == DEFAULT_SCHEDULE.longest


class TestDestinations:
    def test_private_addresses_are_not_public(self) -> None:
        for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                        "::1", "fc00::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1",
                        "100.64.0.1"):  # fmt: skip
            assert not is_public(address), address
        assert is_public("93.184.216.34") and is_public("2606:4700::1111")

    def test_urls_that_cannot_be_webhooks_are_refused(self) -> None:
        for bad in ("", "ftp://example.com/", "http://", "http://user:pw@example.com/",
                    "http://example.com:0/", "http://example.com/#x", "http://exa mple.com/",
                    "https://example.com:99999/", "x" * 3000):  # fmt: skip
            with pytest.raises(InvalidInput):
                parse_url(bad)
        assert parse_url("https://hooks.example.com:8443/in?x=1").hostname == "hooks.example.com"

    async def test_loopback_is_refused_unless_allowed(self) -> None:
        for url in ("http://127.0.0.1:9/", "http://localhost:9/", "http://[::1]:9/"):
            with pytest.raises(InvalidInput, match="private address"):
                await check_destination(url, allow_private=False)
            await check_destination(url, allow_private=True)


class TestRecords:
    def test_secrets_and_rotation(self) -> None:
        secret = new_secret()
        assert validate_secret(secret) == secret
        for bad in ("whsec_", "secret", "whsec_!!!!", "whsec_" + "QUFB" * 4):
            with pytest.raises(InvalidInput) as refused:
                validate_secret(bad)
            assert bad[6:] == "" or bad[6:] not in str(refused.value)  # never echoed
        record, first = new_record(workspace_id="w", url="https://x.example/", event_types=[],
                                   secret="")  # fmt: skip
        rotated = record.rotated(new_secret(), overlap_seconds=60, now_unix=1000.0)
        assert rotated.signing_secrets(1030.0)[1] == first
        assert rotated.signing_secrets(1061.0) == [rotated.secrets[0].secret]
        assert WebhookRecord.from_json(rotated.to_json()) == rotated
        assert first not in repr(rotated)
        with pytest.raises(InvalidInput, match="unknown event type"):
            new_record(workspace_id="w", url="https://x.example/", event_types=["x"], secret="")

    def test_webhooks_need_the_webhooks_manage_scope(self) -> None:
        token = issue_token(workspace_id=WORKSPACE, scopes=["sessions.read", "messages.send"])
        manager = issue_token(workspace_id=WORKSPACE, scopes=["webhooks.manage"])
        access = TokenAccess({token.record.token_id: token.record,
                              manager.record.token_id: manager.record})  # fmt: skip
        with pytest.raises(PermissionDenied, match=r"webhooks\.manage"):
            access.check_workspace(token.text, "SetWebhook", WORKSPACE)
        access.check_workspace(manager.text, "ReplayDeadLetters", WORKSPACE)
        with pytest.raises(PermissionDenied):
            access.check_workspace(manager.text, "SetWebhook", "ws-other")
        with pytest.raises(PermissionDenied):  # the default webhook is the admin's
            access.check_admin(manager.text, "SetDefaultWebhook")


class TestTheBreaker:
    async def test_it_opens_after_failures_lets_one_trial_through_and_closes(self) -> None:
        opened: list[float] = []
        breaker = CircuitBreaker(threshold=3, open_seconds=0.3, on_open=lambda: opened.append(1))
        for _ in range(3):
            async with breaker.admitted():
                breaker.failed()
        assert breaker.is_open and len(opened) == 1
        started = time.monotonic()
        order: list[str] = []

        async def attempt(name: str, *, succeeds: bool) -> None:
            async with breaker.admitted():
                order.append(f"{name}+")
                await asyncio.sleep(0.05)
                (breaker.succeeded if succeeds else breaker.failed)()
                order.append(f"{name}-")

        await asyncio.gather(attempt("trial", succeeds=True), attempt("next", succeeds=True))
        assert time.monotonic() - started >= 0.25  # both waited out the cool-down
        first, second = order[0][:-1], order[2][:-1]
        assert order == [f"{first}+", f"{first}-", f"{second}+", f"{second}-"]  # a lone trial
        assert not breaker.is_open


async def _set_webhook(
    stub: webhook_pb2_grpc.WebhookServiceStub, url: str, *types: str
) -> webhook_pb2.Webhook:
    reply = await stub.SetWebhook(
        webhook_pb2.SetWebhookRequest(workspace_id=WORKSPACE, url=url, event_types=list(types)),
        timeout=10,
    )
    return reply.webhook


async def _send(
    stub: session_pb2_grpc.SessionServiceStub, session_id: str, message_id: str
) -> None:
    await stub.SendMessage(
        pb.SendMessageRequest(
            workspace_id=WORKSPACE, session_id=session_id, client_message_id=message_id,
            to="+14155550101", text="hi",
        ),
        timeout=10,
    )  # fmt: skip


def _of_type(received: list[Received], event_type: str) -> list[Received]:
    return [each for each in received if each.body.get("type") == event_type]


async def _wait(
    receiver: WebhookReceiver,
    condition: Callable[[list[Received]], bool],
    *,
    within_seconds: float = 20.0,
) -> None:
    """Wait (off the event loop, which runs the node) until ``condition`` holds."""
    held = await asyncio.to_thread(receiver.wait_for, condition, timeout=within_seconds)
    assert held, [(each.body.get("type"), each.status) for each in receiver.snapshot()]


class TestOnOneNode:
    async def test_events_arrive_signed_and_a_rotation_keeps_both_secrets_valid(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        with running_receiver() as receiver:
            async with running_node(
                tmp_path, etcd_url, cluster_name, simnet, extra_flags=FAST_RETRIES
            ) as node:
                hooks = webhook_pb2_grpc.WebhookServiceStub(node.channel)
                webhook = await _set_webhook(hooks, receiver.url)
                assert webhook.secret.startswith("whsec_") and webhook.id.startswith("wh_")
                receiver.secrets = [webhook.secret]
                got = await hooks.GetWebhook(webhook_pb2.GetWebhookRequest(workspace_id=WORKSPACE))
                assert got.webhook.secret == "" and got.webhook.url == receiver.url
                await create(node.stub, WORKSPACE, "s-1")
                await wait_state(node.stub, WORKSPACE, "s-1", pb.SESSION_STATE_READY)
                await _send(node.stub, "s-1", "m-1")
                await _wait(receiver, lambda got: len(_of_type(got, "message.read")) == 1)
                before = receiver.snapshot()
                assert all(each.verified_by == (0,) for each in before)
                types = [each.body["type"] for each in before]
                assert types[-4:] == ["message.accepted", "message.sent", "message.delivered",
                                      "message.read"]  # fmt: skip
                assert "session.state_changed" in types and "session.qr" in types
                sequences = [each.body["sequence"] for each in before]
                assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
                ready = next(e for e in before if e.body["data"].get("state") == "READY")
                assert ready.body["session_id"] == "s-1" and ready.body["workspace_id"] == WORKSPACE
                assert ready.headers["webhook-signature"].startswith("v1,")

                rotated = await hooks.RotateWebhookSecret(
                    webhook_pb2.RotateWebhookSecretRequest(
                        workspace_id=WORKSPACE, overlap_seconds=2
                    )
                )
                receiver.secrets = [webhook.secret, rotated.webhook.secret]
                assert rotated.webhook.HasField("previous_secret_expire_time")
                await _send(node.stub, "s-1", "m-2")
                await _wait(receiver, lambda got: len(_of_type(got, "message.read")) == 2)
                during = receiver.snapshot()[len(before) :]
                assert during and all(each.verified_by == (0, 1) for each in during)
                await asyncio.sleep(2.2)  # the overlap ends: only the new secret signs
                await _send(node.stub, "s-1", "m-3")
                await _wait(receiver, lambda got: len(_of_type(got, "message.read")) == 3)
                after = receiver.snapshot()[len(before) + len(during) :]
                assert after and all(each.verified_by == (1,) for each in after)
                ids = _ids_in_order(receiver.snapshot())
                assert len(ids) == len(set(ids))

                test = await hooks.SendTestEvent(
                    webhook_pb2.SendTestEventRequest(workspace_id=WORKSPACE)
                )
                assert test.http_status == 200 and not test.error
                assert receiver.snapshot()[-1].body["type"] == "webhook.test"

    async def test_a_receiver_that_answers_503_with_retry_after_gets_everything_in_order(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        flags = ("--webhook-allow-private", "--webhook-retry-schedule", "30s,30s,30s")
        with running_receiver() as receiver:
            answered = iter(range(10**6))
            receiver.plan = lambda _: (
                (503, {"retry-after": "1"}) if next(answered) < 3 else (200, {})
            )
            async with running_node(
                tmp_path, etcd_url, cluster_name, simnet, extra_flags=flags
            ) as node:
                hooks = webhook_pb2_grpc.WebhookServiceStub(node.channel)
                await _set_webhook(hooks, receiver.url, "message.accepted", "message.read")
                for session_id in ("s-1", "s-2"):
                    await create(node.stub, WORKSPACE, session_id)
                for session_id in ("s-1", "s-2"):
                    await wait_state(node.stub, WORKSPACE, session_id, pb.SESSION_STATE_READY)
                for index in range(4):
                    for session_id in ("s-1", "s-2"):
                        await _send(node.stub, session_id, f"m-{index}")
                # Retry-After: 1 honoured; the schedule alone would wait 30 s.
                await _wait(
                    receiver, lambda got: len({e.event_id for e in got if e.status == 200}) == 16
                )
                received = receiver.snapshot()
                assert any(each.status == 503 for each in received)
                for session_id in ("s-1", "s-2"):
                    mine = [e for e in receiver.delivered() if e.body["session_id"] == session_id]
                    sequences = [each.body["sequence"] for each in mine]
                    assert sequences == sorted(set(sequences)), sequences  # in order, once
                    pairs = [(e.body["type"], e.body["data"]["client_message_id"]) for e in mine]
                    assert sorted(pairs) == sorted(
                        (kind, f"m-{i}") for i in range(4)
                        for kind in ("message.accepted", "message.read")
                    )  # fmt: skip
                    for index in range(4):
                        accepted = pairs.index(("message.accepted", f"m-{index}"))
                        assert accepted < pairs.index(("message.read", f"m-{index}"))
                # One event in flight per session: a retry of an event comes before the next.
                first_503 = next(each for each in received if each.status == 503)
                retried = [each for each in received if each.event_id == first_503.event_id]
                assert retried[-1].status == 200
                assert retried[1].at - retried[0].at >= 0.8

    async def test_a_failing_receiver_fills_the_dead_letters_and_a_replay_delivers_them(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        with running_receiver() as receiver:
            receiver.plan = always(500)
            async with running_node(
                tmp_path, etcd_url, cluster_name, simnet, extra_flags=FAST_RETRIES
            ) as node:
                hooks = webhook_pb2_grpc.WebhookServiceStub(node.channel)
                await _set_webhook(hooks, receiver.url, "message.accepted")
                await create(node.stub, WORKSPACE, "s-1")
                await wait_state(node.stub, WORKSPACE, "s-1", pb.SESSION_STATE_READY)
                await _send(node.stub, "s-1", "m-500")
                await _wait(
                    receiver, lambda got: len(got) == 3
                )  # the three attempts of the schedule

                async def dead() -> list[webhook_pb2.DeadLetter]:
                    reply = await hooks.ListDeadLetters(
                        webhook_pb2.ListDeadLettersRequest(workspace_id=WORKSPACE)
                    )
                    return list(reply.dead_letters)

                await eventually(dead, message="a dead letter after the last attempt")
                receiver.plan = always(400)  # a refusal: no retry at all
                await _send(node.stub, "s-1", "m-400")
                await _wait(receiver, lambda got: len(got) == 4)

                async def two() -> bool:
                    return len(await dead()) == 2

                await eventually(two, message="the refused one is dead at once")
                letters = await dead()
                outcomes = [(each.attempts, each.last_error) for each in letters]
                assert outcomes == [(3, "HTTP 500"), (1, "HTTP 400")]
                assert json.loads(letters[0].body)["data"]["client_message_id"] == "m-500"
                first_page = await hooks.ListDeadLetters(
                    webhook_pb2.ListDeadLettersRequest(workspace_id=WORKSPACE, page_size=1)
                )
                assert len(first_page.dead_letters) == 1 and first_page.next_page_token
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await hooks.ReplayDeadLetters(
                        webhook_pb2.ReplayDeadLettersRequest(
                            workspace_id=WORKSPACE, event_ids=["evt_nope_1"]
                        )
                    )
                assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

                receiver.plan = always(200)  # it recovered
                replayed = await hooks.ReplayDeadLetters(
                    webhook_pb2.ReplayDeadLettersRequest(workspace_id=WORKSPACE, all=True)
                )
                assert replayed.replayed == 2

                async def none_left() -> bool:
                    return not await dead()

                await eventually(none_left, message="replayed letters leave the list")
                delivered = receiver.delivered()
                assert sorted(e.event_id for e in delivered) == sorted(e.event_id for e in letters)

    async def test_a_deleted_session_posts_its_failed_messages_and_its_stop_before_it_answers(
        self, tmp_path: Path, etcd_url: str, cluster_name: str
    ) -> None:
        async with running_simnet(pair_delay_ms=-1) as unpaired:  # nobody scans the QR
            with running_receiver() as receiver:
                async with running_node(
                    tmp_path, etcd_url, cluster_name, unpaired, extra_flags=FAST_RETRIES
                ) as node:
                    hooks = webhook_pb2_grpc.WebhookServiceStub(node.channel)
                    await _set_webhook(hooks, receiver.url)
                    await create(node.stub, WORKSPACE, "s-1")
                    await wait_state(node.stub, WORKSPACE, "s-1", pb.SESSION_STATE_QR_PENDING)
                    await _send(node.stub, "s-1", "m-never")
                    await node.stub.DeleteSession(
                        pb.DeleteSessionRequest(workspace_id=WORKSPACE, session_id="s-1",
                                                reason="user_initiated"),
                        timeout=10,
                    )  # fmt: skip
                    # Already there when the delete answers: nobody would post them later.
                    received = receiver.snapshot()
                    failed = _of_type(received, "message.failed")
                    assert [e.body["data"]["client_message_id"] for e in failed] == ["m-never"]
                    last = received[-1].body
                    assert last["type"] == "session.state_changed"
                    assert last["data"]["state"] == "STOPPED"
                    assert last["data"]["reason"] == "user_initiated"

    async def test_bad_webhooks_are_refused_and_nothing_is_stored(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(tmp_path, etcd_url, cluster_name, simnet) as node:
            hooks = webhook_pb2_grpc.WebhookServiceStub(node.channel)
            for url, types, detail in (
                ("http://127.0.0.1:9/hook", [], "private address"),
                ("http://169.254.169.254/latest/meta-data", [], "private address"),
                ("ftp://example.com/", [], "http"),
                ("https://example.com/", ["session.nope"], "unknown event type"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await hooks.SetWebhook(
                        webhook_pb2.SetWebhookRequest(
                            workspace_id=WORKSPACE, url=url, event_types=types
                        )
                    )
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert detail in (refused.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await hooks.GetWebhook(webhook_pb2.GetWebhookRequest(workspace_id=WORKSPACE))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _meshctl(gateway: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "client.meshctl", *args, "--gateway", gateway],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(180)
async def test_kill_9_of_the_owner_mid_burst_loses_no_event(tmp_path: Path) -> None:
    """The mesh default webhook (set with meshctl), a burst of messages, the owner killed while
    their events are being delivered: after the failover every event has arrived at least
    once, and exactly once after dedupe by webhook-id, in per-session order of first arrival."""
    settings = MeshSettings(
        node_count=2,
        lease_ttl_seconds=2,
        extra_node_flags=("--webhook-allow-private", "--webhook-retry-schedule", "0.2s,0.5s,1s,2s"),
        gateway_flags=("--webhook-allow-private",),
    )
    burst = 25
    with running_receiver() as receiver:

        def slowly(_: Received) -> tuple[int, dict[str, str]]:
            time.sleep(0.01)  # a receiver that takes its time: the kill lands mid-delivery
            return 200, {}

        receiver.plan = slowly
        secret = new_secret()
        secret_file = tmp_path / "secret"
        secret_file.write_text(secret + "\n")
        receiver.secrets = [secret]
        async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
            shown = await asyncio.to_thread(
                _meshctl, mesh.gateway_address, "webhook", "set-default", receiver.url,
                "--secret-file", str(secret_file), "--json",
            )  # fmt: skip
            assert json.loads(shown)["webhook"]["url"] == receiver.url
            async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
                stub = session_pb2_grpc.SessionServiceStub(channel)
                created = await create(stub, WORKSPACE, "s-1")
                await wait_state(stub, WORKSPACE, "s-1", pb.SESSION_STATE_READY)
                owner = created.node_id
                await asyncio.gather(*(_send(stub, "s-1", f"m-{n}") for n in range(burst)))
                await asyncio.to_thread(
                    receiver.wait_for, lambda got: len(_of_type(got, "message.sent")) >= 3,
                    timeout=20,
                )  # fmt: skip
                await mesh.kill_node(owner)

                def everything(got: list[Received]) -> bool:
                    if len({e.event_id for e in _of_type(got, "message.read")}) < burst:
                        return False
                    log = next((tmp_path / "mesh").rglob("events.log"))
                    logged = {
                        event.sequence
                        for event in parse_events(log.read_bytes())
                        if webhook_type(event) is not None
                    }
                    return logged <= {each.body["sequence"] for each in got}

                held = await asyncio.to_thread(receiver.wait_for, everything, timeout=60)
                summary = [
                    (e.body.get("type"), e.body.get("sequence")) for e in receiver.snapshot()
                ]
                assert held, f"{summary}\n{mesh.all_log_tails()}"
        received = receiver.snapshot()
        assert all(each.verified_by == (0,) for each in received)
        first: dict[str, Received] = {}
        for each in received:
            if each.event_id in first:  # a repeat carries the very same event
                assert each.body == first[each.event_id].body
            else:
                first[each.event_id] = each
        unique = list(first.values())
        everyone = {f"m-{n}" for n in range(burst)}
        for kind in ("message.accepted", "message.read"):
            messages = {each.body["data"]["client_message_id"] for each in _of_type(unique, kind)}
            assert messages == everyone, (kind, sorted(everyone - messages))
        moved = _of_type(unique, "session.moved")
        assert moved and moved[0].body["data"]["previous_node_id"] == owner
        sequences = [each.body["sequence"] for each in unique]
        assert sequences == sorted(sequences), "first arrivals in per-session order"
        # The ground truth: the session's durable event log. Every event in it arrived, as
        # what it is (acks a new owner never saw — a message it found already read — were
        # never events: the log holds what happened on the owner that saw it).
        log = next((tmp_path / "mesh").rglob("events.log"))
        logged = {event.sequence: webhook_type(event) for event in parse_events(log.read_bytes())}
        arrived = {each.body["sequence"]: each.body["type"] for each in unique}
        assert arrived == logged
        print(
            f"kill -9 mid-burst: {len(received)} requests, {len(unique)} distinct events, "
            f"{len(received) - len(unique)} repeats (deduped by webhook-id), none lost"
        )
