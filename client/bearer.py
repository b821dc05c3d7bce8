"""A channel interceptor that sends a bearer token with every call: for a Python caller of
the gateway (and ``meshctl``) that would rather not pass ``metadata=`` each time::

    channel = grpc.aio.insecure_channel("127.0.0.1:7000", interceptors=bearer_interceptors(token))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from registry.auth import (
    AUTHORIZATION_KEY,
    bearer_metadata,
)


def _with_token(details: Any, token_metadata: tuple[tuple[str, str], ...]) -> Any:
    metadata = tuple(details.metadata or ())
    if any(key == AUTHORIZATION_KEY for key, _ in metadata):
        return details  # the call brought its own
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*metadata, *token_metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, token_metadata: tuple[tuple[str, str], ...]) -> None:
        self._token_metadata = token_metadata

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token_metadata), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, token_metadata: tuple[tuple[str, str], ...]) -> None:
        self._token_metadata = token_metadata

    async def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token_metadata), request)


def bearer_interceptors(token: str) -> list[Any]:
    """Interceptors that add ``authorization: Bearer <token>`` to every unary and
    server-streaming call (none for an empty token)."""
    if not token:
        return []
    token_metadata = bearer_metadata(token)
    return [_UnaryUnary(token_metadata), _UnaryStream(token_metadata)]
