"""A real HTTP webhook receiver for tests and the benchmark: a threaded ``http.server`` on a
free port that verifies every request's Standard Webhooks signature with the
``standardwebhooks`` library, answers as its plan says (200, or 503 with ``Retry-After`` for a
while, or always 500…), and records what arrived.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

Answer = tuple[int, dict[str, str]]
"""An HTTP status and the headers to send with it."""


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    event_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    verified_by: tuple[int, ...]
    """Indexes of the secrets whose signature matched (empty: none did)."""
    status: int
    """What the receiver answered."""
    at: float = field(default_factory=time.monotonic)
    received_at_unix: float = field(default_factory=time.time)
    """When it arrived, on the wall clock (an event's ``timestamp`` is on the same one)."""


def always(status: int = 200, **headers: str) -> Callable[[Received], Answer]:
    """A plan that answers ``status`` to every request."""
    return lambda _: (status, dict(headers))


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 512  # many senders connect at once (the default backlog is 5)


class WebhookReceiver:
    """The receiver (see the module docstring); use :func:`running_receiver`."""

    def __init__(
        self, secrets: list[str] | None = None, *, verify: bool = True, port: int = 0
    ) -> None:
        self.secrets: list[str] = list(secrets or [])
        self._verify = verify
        self.plan: Callable[[Received], Answer] = always(200)
        self.received: list[Received] = []
        self._condition = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                data = self.rfile.read(length)
                headers = {key.lower(): value for key, value in self.headers.items()}
                receiver._answer(self, data, headers)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where to point a webhook."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def _verified_by(self, data: bytes, headers: dict[str, str]) -> tuple[int, ...]:
        matched = []
        for index, secret in enumerate(self.secrets):
            with contextlib.suppress(WebhookVerificationError, ValueError):
                Webhook(secret).verify(data, headers)
                matched.append(index)
        return tuple(matched)

    def _answer(
        self, handler: http.server.BaseHTTPRequestHandler, data: bytes, headers: dict[str, str]
    ) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        with self._condition:
            verified = self._verified_by(data, headers) if self._verify else ()
            probe = Received(headers.get("webhook-id", ""), body, headers, verified, 0)
            status, extra = self.plan(probe)
            self.received.append(
                Received(
                    probe.event_id,
                    body,
                    headers,
                    verified,
                    status,
                    probe.at,
                    probe.received_at_unix,
                )
            )
            self._condition.notify_all()
        handler.send_response(status)
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def start(self) -> None:
        """Serve in a thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Received]:
        """What arrived so far."""
        with self._condition:
            return list(self.received)

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in arrival order."""
        return [each for each in self.snapshot() if 200 <= each.status < 300]

    def wait_for(self, condition: Callable[[list[Received]], bool], *, timeout: float) -> bool:
        """Block until ``condition(received)`` holds or ``timeout`` passes; whether it held."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not condition(self.received):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True


@contextlib.contextmanager
def running_receiver(
    secrets: list[str] | None = None, *, verify: bool = True
) -> Iterator[WebhookReceiver]:
    """A started receiver, stopped afterwards (``verify``: check every signature)."""
    receiver = WebhookReceiver(secrets, verify=verify)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
