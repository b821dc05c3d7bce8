"""A node's webhook delivery: where each workspace's events go (the watch-fed directory),
the sender, the retry schedule, the dead-letter lists, replays and test events — shared by the
:class:`node.webhooks.deliverer.SessionWebhooks` of every hosted session.

One event's delivery (:meth:`WebhookHub.deliver`) tries until the receiver answers 2xx, or
refuses it (a 4xx not retried), or the schedule ends; the last two append it to the session's
dead-letter list. Each attempt is a span (``webhook.deliver``) linked to the trace the event
was emitted in, and carries that attempt's ``traceparent`` to the receiver.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

from node.event_journal import EventJournal
from node.storage import WEBHOOK_DEAD_LETTERS, SessionStorage
from node.webhooks.dead_letters import DeadLetter, dead_letter_line, parse_dead_letters
from node.webhooks.deliverer import SessionWebhooks
from node.webhooks.metrics import WebhookMetrics
from node.webhooks.payloads import event_id, test_body
from node.webhooks.schedule import DEFAULT_SCHEDULE, Outcome, RetrySchedule
from node.webhooks.sender import AttemptResult, WebhookSender
from registry import InvalidInput, MeshError, NotFound
from registry.webhooks import WEBHOOK_TEST, WebhookRecord

_log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

_OUTCOME_LABELS = {
    Outcome.DELIVERED: "delivered",
    Outcome.RETRY: "failed",
    Outcome.REFUSED: "refused",
}
"""An attempt's outcome as the attempts metric labels it."""
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class Endpoints(Protocol):
    """Where a workspace's events go (:class:`registry.webhooks.WebhookDirectory`)."""

    def for_workspace(self, workspace_id: str) -> WebhookRecord | None:
        """The workspace's own webhook, else the default, else None."""
        ...


def _link_to(trace_parent: str) -> list[Link]:
    if not trace_parent:
        return []
    context = propagate.extract({"traceparent": trace_parent})
    span_context = trace.get_current_span(context).get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


def _page_offset(token: str) -> int:
    if not token:
        return 0
    try:
        offset = int(base64.urlsafe_b64decode(token.encode("ascii")).decode())
    except (UnicodeError, ValueError, binascii.Error):
        offset = -1
    if offset < 0:
        raise InvalidInput("page_token is invalid: pass a next_page_token from a previous response")
    return offset


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


class WebhookHub:
    """Webhook delivery of one node (see the module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        endpoints: Endpoints,
        sender: WebhookSender,
        storage: SessionStorage,
        schedule: RetrySchedule = DEFAULT_SCHEDULE,
    ) -> None:
        self._node_id = node_id
        self._endpoints = endpoints
        self._sender = sender
        self.storage = storage
        self._schedule = schedule
        self._metrics = WebhookMetrics(node_id)
        self._sessions: set[SessionWebhooks] = set()
        self._dead_locks: collections.defaultdict[tuple[str, str], asyncio.Lock] = (
            collections.defaultdict(asyncio.Lock)
        )
        self._replays: set[asyncio.Task[None]] = set()
        self._metrics.watch(
            oldest_age=self.oldest_undelivered_age, open_circuits=sender.open_circuits
        )

    def endpoint(self, workspace_id: str) -> WebhookRecord | None:
        """Where the workspace's events go now, or None."""
        return self._endpoints.for_workspace(workspace_id)

    def session(
        self,
        *,
        workspace_id: str,
        session_id: str,
        session_key: str,
        journal: EventJournal,
        may_write: Callable[[], bool],
    ) -> SessionWebhooks:
        """The delivery of one hosted session (start it, and stop it when the session stops)."""
        webhooks = SessionWebhooks(
            self,
            workspace_id=workspace_id,
            session_id=session_id,
            session_key=session_key,
            journal=journal,
            may_write=may_write,
        )
        self._sessions.add(webhooks)
        return webhooks

    def forget(self, webhooks: SessionWebhooks) -> None:
        """A session stopped."""
        self._sessions.discard(webhooks)

    def oldest_undelivered_age(self) -> float:
        """Seconds since the oldest event being delivered now was emitted (0: none)."""
        pending = [s.pending_since_unix for s in self._sessions if s.pending_since_unix]
        return max(0.0, time.time() - min(pending)) if pending else 0.0

    async def _attempt(
        self,
        record: WebhookRecord,
        *,
        workspace_id: str,
        session_id: str,
        event_id: str,
        event_type: str,
        attempt: int,
        trace_parent: str,
        body: bytes,
        use_breaker: bool = True,
    ) -> AttemptResult:
        attributes: dict[str, str | int] = {
            "sessionmesh.workspace_id": workspace_id,
            "sessionmesh.session_id": session_id,
            "sessionmesh.node_id": self._node_id,
            "sessionmesh.webhook.event_id": event_id,
            "sessionmesh.webhook.event_type": event_type,
            "sessionmesh.webhook.attempt": attempt,
        }
        with _tracer.start_as_current_span(
            "webhook.deliver",
            kind=SpanKind.CLIENT,
            links=_link_to(trace_parent),
            attributes=attributes,
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            started = time.perf_counter()
            result = await self._sender.post(
                record, event_id, body, extra_headers=carrier, use_breaker=use_breaker
            )
            outcome = _OUTCOME_LABELS[result.outcome]
            self._metrics.attempt(outcome, time.perf_counter() - started)
            span.set_attribute("http.response.status_code", result.status)
            span.set_attribute("sessionmesh.webhook.outcome", outcome)
            if result.outcome is not Outcome.DELIVERED:
                span.set_status(trace.StatusCode.ERROR, result.summary)
        return result

    async def deliver(
        self,
        *,
        workspace_id: str,
        session_id: str,
        event_id: str,
        event_type: str,
        sequence: int,
        event_at_unix: float,
        trace_parent: str,
        body: bytes,
        may_write: Callable[[], bool],
        is_replay: bool = False,
    ) -> bool:
        """Post one event until it is settled; whether it was delivered. An event no endpoint
        wants (none set, or not its type) is settled at once; one the schedule gives up on
        goes to the session's dead-letter list."""
        attempt = 0
        while True:
            record = self.endpoint(workspace_id)
            if record is None or not record.wants(event_type):
                return False
            attempt += 1
            result = await self._attempt(
                record,
                workspace_id=workspace_id,
                session_id=session_id,
                event_id=event_id,
                event_type=event_type,
                attempt=attempt,
                trace_parent=trace_parent,
                body=body,
            )
            if result.outcome is Outcome.DELIVERED:
                self._metrics.settled(
                    "replayed" if is_replay else "delivered",
                    latency_seconds=None if is_replay else max(0.0, time.time() - event_at_unix),
                )
                return True
            if result.outcome is Outcome.REFUSED or attempt >= self._schedule.attempts:
                letter = DeadLetter(
                    event_id=event_id,
                    session_id=session_id,
                    sequence=sequence,
                    event_type=event_type,
                    event_at_unix=event_at_unix,
                    dead_at_unix=time.time(),
                    attempts=attempt,
                    last_error=result.summary,
                    body=body.decode(),
                )
                await self._add_dead_letter(workspace_id, letter, may_write=may_write)
                return False
            await asyncio.sleep(self._schedule.wait_before(attempt - 1, result.retry_after))

    async def _add_dead_letter(
        self, workspace_id: str, letter: DeadLetter, *, may_write: Callable[[], bool]
    ) -> None:
        _log.warning(
            "webhook_dead_letter",
            workspace_id=workspace_id,
            session_id=letter.session_id,
            event_id=letter.event_id,
            attempts=letter.attempts,
            last_error=letter.last_error,
        )
        async with self._dead_locks[(workspace_id, letter.session_id)]:
            try:
                await self.storage.append_webhook_file(
                    workspace_id,
                    letter.session_id,
                    WEBHOOK_DEAD_LETTERS,
                    dead_letter_line(letter),
                    may_write=may_write,
                )
            except (MeshError, OSError) as error:
                _log.warning("webhook_dead_letter_not_written", error=repr(error))
                return
        self._metrics.settled("dead_lettered")

    async def _letters_of(self, workspace_id: str, session_id: str) -> list[DeadLetter]:
        data = await self.storage.read_webhook_file(workspace_id, session_id, WEBHOOK_DEAD_LETTERS)
        return parse_dead_letters(data)

    async def dead_letters(
        self, workspace_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[DeadLetter], str]:
        """One page of the workspace's dead letters, oldest first, and the next page's token."""
        if page_size < 0:
            raise InvalidInput("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        offset = _page_offset(page_token)
        letters: list[DeadLetter] = []
        for session_id in await self.storage.list_sessions(workspace_id):
            letters.extend(await self._letters_of(workspace_id, session_id))
        letters.sort(key=lambda each: (each.dead_at_unix, each.session_id, each.sequence))
        page = letters[offset : offset + size]
        has_more = offset + size < len(letters)
        return page, _page_token(offset + size) if has_more else ""

    async def replay(
        self,
        workspace_id: str,
        *,
        event_ids: Iterable[str],
        replay_all: bool,
        may_write: Callable[[], bool],
    ) -> int:
        """Deliver the chosen dead letters again, in the background, each taken off its list
        once delivered; how many were chosen. ``NotFound`` for an id that is not a dead
        letter of the workspace."""
        wanted = set(event_ids)
        if not replay_all and not wanted:
            raise InvalidInput("name the event_ids to replay, or ask for all")
        chosen: list[DeadLetter] = []
        for session_id in await self.storage.list_sessions(workspace_id):
            letters = await self._letters_of(workspace_id, session_id)
            chosen.extend(each for each in letters if replay_all or each.event_id in wanted)
        missing = wanted - {each.event_id for each in chosen}
        if missing and not replay_all:
            raise NotFound(f"{sorted(missing)[0][:80]!r} is not a dead letter of {workspace_id}")
        chosen.sort(key=lambda each: (each.session_id, each.sequence))
        task = asyncio.create_task(
            self._replay(workspace_id, chosen, may_write), name=f"webhook-replay-{workspace_id}"
        )
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)
        return len(chosen)

    async def _replay(
        self, workspace_id: str, letters: list[DeadLetter], may_write: Callable[[], bool]
    ) -> None:
        for letter in letters:
            delivered = await self.deliver(
                workspace_id=workspace_id,
                session_id=letter.session_id,
                event_id=letter.event_id,
                event_type=letter.event_type,
                sequence=letter.sequence,
                event_at_unix=letter.event_at_unix,
                trace_parent="",
                body=letter.body.encode(),
                may_write=may_write,
                is_replay=True,
            )
            if delivered:
                await self._remove_letter(workspace_id, letter, may_write)

    async def _remove_letter(
        self, workspace_id: str, letter: DeadLetter, may_write: Callable[[], bool]
    ) -> None:
        async with self._dead_locks[(workspace_id, letter.session_id)]:
            try:
                kept = [
                    each
                    for each in await self._letters_of(workspace_id, letter.session_id)
                    if each.event_id != letter.event_id
                ]
                await self.storage.write_webhook_file(
                    workspace_id,
                    letter.session_id,
                    WEBHOOK_DEAD_LETTERS,
                    b"".join(dead_letter_line(each) for each in kept),
                    may_write=may_write,
                )
            except (MeshError, OSError) as error:
                _log.warning("webhook_dead_letter_not_removed", error=repr(error))

    async def send_test(self, workspace_id: str) -> tuple[str, str, AttemptResult]:
        """Post one ``webhook.test`` event now: its id, the URL and how the receiver answered.
        ``NotFound`` when no webhook applies to the workspace."""
        record = self.endpoint(workspace_id)
        if record is None:
            raise NotFound(f"no webhook applies to {workspace_id}: set one with SetWebhook")
        now = time.time()
        test_id = event_id(f"test{int(now * 1000):x}", 0)
        result = await self._attempt(
            record,
            workspace_id=workspace_id,
            session_id="",
            event_id=test_id,
            event_type=WEBHOOK_TEST,
            attempt=1,
            trace_parent="",
            body=test_body(workspace_id=workspace_id, at_unix=now),
            use_breaker=False,
        )
        return test_id, record.url, result

    async def stop(self) -> None:
        """Stop the replays and close the HTTP client."""
        for task in list(self._replays):
            task.cancel()
        if self._replays:
            await asyncio.gather(*self._replays, return_exceptions=True)
        await self._sender.close()
