"""Posting one signed event to a receiver: the node's pooled HTTP client (httpx), the
destination check, per-receiver bounds (at most ``max_concurrency`` requests at once, each
within ``timeout_seconds``) and circuit breaker, and the Standard Webhooks signature.

Signatures use the ``standardwebhooks`` package (the specification's reference library), so
they are exactly what any receiver's off-the-shelf verifier expects: ``webhook-id``,
``webhook-timestamp`` (the attempt's time, in seconds) and ``webhook-signature`` — ``v1,<base64
HMAC-SHA256 of id.timestamp.body>``, one per secret that signs (two during a rotation's
overlap, separated by a space).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from node.webhooks.breaker import CircuitBreaker
from node.webhooks.schedule import Outcome, outcome_of, retry_after_seconds
from registry import InvalidInput
from registry.webhooks import DestinationRefused, WebhookRecord, check_destination

DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_CONCURRENCY = 16
USER_AGENT = "sessionmesh-webhooks/1"
_FIXED_HEADERS = {"user-agent": USER_AGENT, "content-type": "application/json"}
CLIENT_SHARDS = 8
"""httpx transports (connection pools) the sender spreads requests over: one pool slows down
sharply with more than a few connections busy at once (it scans its connections on every
request)."""
CHECKED_FOR_SECONDS = 10.0
"""How long a passed destination check holds for a URL before its host is resolved again."""
_MAX_SIGNERS = 256
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is the metrics' job
_MAX_RECEIVERS = 4096


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt ended."""

    outcome: Outcome
    status: int = 0
    """The HTTP status; 0 when there was no answer."""
    retry_after: float | None = None
    error: str = ""
    """What went wrong, for the dead-letter list and the logs (never a secret)."""

    @property
    def summary(self) -> str:
        """``HTTP 503`` or the error."""
        return self.error or f"HTTP {self.status}"


@dataclass
class _Receiver:
    slots: asyncio.Semaphore
    breaker: CircuitBreaker


class WebhookSender:
    """Posts events for one node (see the module docstring)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        on_circuit_open: Callable[[], None] = lambda: None,
    ) -> None:
        self._allow_private = allow_private
        self._timeout_seconds = timeout_seconds
        self._max_concurrency = max_concurrency
        self._on_circuit_open = on_circuit_open
        # httpx's transports directly: the client's layers (request merging, auth, redirects,
        # cookies) cost a fifth of an attempt's CPU and none of them is wanted here.
        self._transports = [
            httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
                retries=0,
            )
            for _ in range(CLIENT_SHARDS)
        ]
        self._timeouts = httpx.Timeout(timeout_seconds).as_dict()
        self._next_transport = itertools.cycle(self._transports)
        self._receivers: dict[str, _Receiver] = {}
        self._checked: dict[str, float] = {}
        """URLs whose destination check passed, until when (monotonic)."""
        self._signers: dict[str, Webhook] = {}

    def _receiver(self, url: str) -> _Receiver:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        receiver = self._receivers.get(key)
        if receiver is None:
            if len(self._receivers) >= _MAX_RECEIVERS:
                self._receivers.pop(next(iter(self._receivers)))
            receiver = _Receiver(
                slots=asyncio.Semaphore(self._max_concurrency),
                breaker=CircuitBreaker(on_open=self._on_circuit_open),
            )
            self._receivers[key] = receiver
        return receiver

    def _signer(self, secret: str) -> Webhook:
        signer = self._signers.get(secret)
        if signer is None:
            if len(self._signers) >= _MAX_SIGNERS:
                self._signers.clear()
            signer = self._signers[secret] = Webhook(secret)
        return signer

    def signed_headers(
        self, record: WebhookRecord, event_id: str, body: bytes, *, now_unix: float
    ) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt."""
        moment = datetime.fromtimestamp(now_unix, tz=UTC)
        text = body.decode()
        signatures = [
            self._signer(secret).sign(event_id, moment, text)
            for secret in record.signing_secrets(now_unix)
        ]
        return {
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now_unix)),
            "webhook-signature": " ".join(signatures),
        }

    async def post(
        self,
        record: WebhookRecord,
        event_id: str,
        body: bytes,
        *,
        extra_headers: dict[str, str] | None = None,
        use_breaker: bool = True,
    ) -> AttemptResult:
        """One attempt: wait for the receiver's breaker and a slot, check where the URL
        leads, sign, post; never raises for what the receiver or the network does."""
        receiver = self._receiver(record.url)
        if not use_breaker:
            return await self._attempt(receiver, record, event_id, body, extra_headers)
        async with receiver.breaker.admitted():
            result = await self._attempt(receiver, record, event_id, body, extra_headers)
            if result.outcome is Outcome.RETRY:
                receiver.breaker.failed()
            else:
                receiver.breaker.succeeded()
            return result

    async def _attempt(
        self,
        receiver: _Receiver,
        record: WebhookRecord,
        event_id: str,
        body: bytes,
        extra_headers: dict[str, str] | None,
    ) -> AttemptResult:
        async with receiver.slots:
            try:
                await self._check(record.url)
            except DestinationRefused as refused:
                return AttemptResult(Outcome.REFUSED, error=refused.message)
            except InvalidInput as invalid:
                return AttemptResult(Outcome.REFUSED, error=invalid.message)
            except OSError as error:
                return AttemptResult(Outcome.RETRY, error=f"cannot resolve the host: {error}")
            headers = self.signed_headers(record, event_id, body, now_unix=time.time())
            headers.update(_FIXED_HEADERS)
            if extra_headers:
                headers.update(extra_headers)
            request = httpx.Request(
                "POST",
                record.url,
                headers=headers,
                content=body,
                extensions={"timeout": self._timeouts},
            )
            try:
                response = await next(self._next_transport).handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            except httpx.TimeoutException:
                return AttemptResult(
                    Outcome.RETRY, error=f"no answer within {self._timeout_seconds:g} s"
                )
            except httpx.HTTPError as error:
                return AttemptResult(Outcome.RETRY, error=f"{type(error).__name__}: {error}"[:300])
        status = response.status_code
        return AttemptResult(
            outcome_of(status),
            status=status,
            retry_after=retry_after_seconds(status, response.headers.get("retry-after")),
        )

    async def _check(self, url: str) -> None:
        """The destination check, its pass remembered for ``CHECKED_FOR_SECONDS`` per URL
        (a name is resolved once in a while, not before every attempt)."""
        now = time.monotonic()
        if self._checked.get(url, 0.0) > now:
            return
        await check_destination(url, allow_private=self._allow_private)
        if len(self._checked) >= _MAX_RECEIVERS:
            self._checked.clear()
        self._checked[url] = now + CHECKED_FOR_SECONDS

    def open_circuits(self) -> int:
        """Receivers whose breaker is open now."""
        return sum(1 for receiver in self._receivers.values() if receiver.breaker.is_open)

    async def close(self) -> None:
        """Close the pooled connections."""
        for transport in self._transports:
            await transport.aclose()
