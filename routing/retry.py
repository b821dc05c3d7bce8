"""Retry policy as data, and :class:`Attempts`: the one decision of where a failed call goes
next. The gateway and the proxyless client both follow it.

- ``FAILED_PRECONDITION`` naming the owner (``sessionmesh-owner``): the node did nothing;
  re-send to that owner, at once the first time. Nodes that name each other while a slot
  moves are followed again after a backoff, from the watch-fed views. A ``FAILED_PRECONDITION``
  carrying the session's state (``WrongState``: a pairing code for a paired session) is an
  answer, not a redirect.
- A retryable code (``UNAVAILABLE`` during a handoff, ``CANCELLED`` from a node that stops,
  ``RESOURCE_EXHAUSTED`` *with a retry hint* from a node that sheds load): wait — the server's
  hint (``sessionmesh-retry-after-ms``, or gRPC's ``grpc-retry-pushback-ms``), jittered, else
  the policy's backoff — then route again from the views. Every ``SessionService`` RPC is
  idempotent, so sending again is safe. A ``RESOURCE_EXHAUSTED`` without a hint (the node
  hosts as many sessions as it may) is an answer, not a retry.
- Everything else, or a wait that would pass the caller's deadline: give up, and the caller
  sees the node's status unchanged.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import grpc
import structlog

from registry import Backoff, MeshError, NotOwner, from_rpc_error, owner_address
from routing.resolver import Resolver

_log = structlog.get_logger(__name__)


def _default_retryable_codes() -> frozenset[grpc.StatusCode]:
    return frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


DEFAULT_BACKOFF = Backoff(initial_seconds=0.02, max_seconds=0.5, jitter=0.2)
"""20 ms doubling to 500 ms, ±20 % jitter so that retries of many callers scatter."""


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a failed call again."""

    retryable_codes: frozenset[grpc.StatusCode] = field(default_factory=_default_retryable_codes)
    """Status codes that may succeed when the same call is sent again. Every SessionService RPC
    is idempotent (by session id, by client message id), so a CANCELLED that the caller did not
    cause — a node stopping, or its channel closing as it leaves — is safe to send again."""
    backoff: Backoff = DEFAULT_BACKOFF
    """Delays between attempts when the server gives no hint."""
    max_attempts: int = 5
    """Most attempts per call, the first one included (a bound when the caller set no deadline)."""

    def is_retryable(self, code: grpc.StatusCode, *, hint_ms: int = 0) -> bool:
        """Whether a call that ended with ``code`` (and the server's hint) may be retried."""
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return hint_ms > 0  # shed load: the server says when; without a hint it is full
        return code in self.retryable_codes

    def delay_seconds(
        self,
        *,
        attempt: int,
        code: grpc.StatusCode,
        hint_ms: int = 0,
        time_remaining_seconds: float | None = None,
    ) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1 = the first), or None when the
        call must not retry.

        None when ``code`` is not retryable, the wait would reach past the caller's deadline
        (``time_remaining_seconds``), or — only for a caller without a deadline — the attempts
        are used up: a caller who gave a deadline sees latency, not errors, until it passes (a
        dead node's lease takes a few seconds to expire). The server's hint (``hint_ms``)
        wins over the computed backoff.
        """
        if not self.is_retryable(code, hint_ms=hint_ms):
            return None
        if time_remaining_seconds is None and attempt >= self.max_attempts:
            return None
        if hint_ms:
            # Jittered like the backoff: callers refused together must not return together.
            spread = self.backoff.jitter * (2 * random.random() - 1)
            delay_seconds = hint_ms / 1000 * (1 + spread)
        else:
            delay_seconds = self.backoff.delay_seconds(attempt)
        if time_remaining_seconds is not None and delay_seconds >= time_remaining_seconds:
            return None
        return delay_seconds


DEFAULT_RETRY_POLICY = RetryPolicy()


@dataclass(frozen=True)
class NextAttempt:
    """Where to send a failed call again, and why."""

    address: str
    is_reroute: bool
    """True: a node named another owner (or nodes disagreed); False: a retry after a wait."""


class Attempts:
    """The retry state of one call (see the module docstring); built only when a call failed,
    so the first attempt costs nothing.

    ``deadline`` is the caller's deadline in event-loop time (None: no deadline; then the
    policy's ``max_attempts`` bounds the retries).
    """

    def __init__(
        self,
        *,
        workspace_id: str,
        address: str | None,
        resolver: Resolver,
        deadline: float | None,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> None:
        self._workspace_id = workspace_id
        self._address = address
        self._resolver = resolver
        self._deadline = deadline
        self._policy = policy
        self._retry_count = 0
        self._refused_addresses: set[str] = set()

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (None: no deadline)."""
        if self._deadline is None:
            return None
        return max(self._deadline - asyncio.get_running_loop().time(), 0.0)

    async def first_address(self) -> str:
        """Resolve the owner from the views; while none can serve, wait within the deadline.
        Raises the ``MeshError`` of the last try when the wait would pass the deadline."""
        while True:
            try:
                self._address = self._resolver.resolve(self._workspace_id).address
                return self._address
            except MeshError:
                if not await self._wait(grpc.StatusCode.UNAVAILABLE, hint_ms=0):
                    raise

    async def after_failure(self, error: grpc.aio.AioRpcError) -> NextAttempt | None:
        """Where to send the call next after it failed with ``error`` (after waiting if need
        be), or None to give up and answer with ``error``."""
        failure = from_rpc_error(error)
        if isinstance(failure, NotOwner):
            return await self._redirect(owner_address(failure.metadata))
        if not await self._wait(error.code(), hint_ms=failure.retry_after_ms):
            return None
        # The slot may have moved or its node died meanwhile: follow the views again, except
        # back to a node that already said it is not the owner.
        address = self._resolved_address()
        if address is not None and address not in self._refused_addresses:
            self._address = address
        if self._address is None:
            return None
        return NextAttempt(self._address, is_reroute=False)

    def _resolved_address(self) -> str | None:
        try:
            return self._resolver.resolve(self._workspace_id).address
        except MeshError:
            return None

    async def _wait(self, code: grpc.StatusCode, *, hint_ms: int) -> bool:
        self._retry_count += 1
        delay_seconds = self._policy.delay_seconds(
            attempt=self._retry_count,
            code=code,
            hint_ms=hint_ms,
            time_remaining_seconds=self.time_remaining(),
        )
        if delay_seconds is None:
            return False
        await asyncio.sleep(delay_seconds)
        return True

    async def _redirect(self, named: str | None) -> NextAttempt | None:
        """After ``FAILED_PRECONDITION`` (the node did nothing): go to the owner it named.

        The first redirect to a named owner that has not refused yet is immediate. Otherwise
        (no owner named, or nodes naming each other while a slot moves) wait a backoff and
        follow the views again: views of a moving slot converge within milliseconds. It gives
        up only when the caller's deadline would pass (or, without a deadline, after the
        policy's attempts).
        """
        if self._address is not None:
            self._refused_addresses.add(self._address)
        if named is not None and named not in self._refused_addresses:
            self._address = named
            return NextAttempt(named, is_reroute=True)
        self._retry_count += 1
        delay_seconds = self._policy.backoff.delay_seconds(self._retry_count)
        time_remaining_seconds = self.time_remaining()
        if (time_remaining_seconds is None and self._retry_count >= self._policy.max_attempts) or (
            time_remaining_seconds is not None and delay_seconds >= time_remaining_seconds
        ):
            _log.warning(
                "redirect_gave_up",
                workspace_id=self._workspace_id,
                refused_by=sorted(self._refused_addresses),
                named=named,
            )
            return None
        await asyncio.sleep(delay_seconds)
        self._refused_addresses.clear()  # after the wait, every view may have moved on
        self._address = self._resolved_address() or self._address
        if self._address is None:
            return None
        return NextAttempt(self._address, is_reroute=True)
