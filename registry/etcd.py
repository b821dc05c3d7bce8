"""The mesh's etcd client: endpoints, connecting, and the one place etcd's errors become ours.

Every etcd call of the packages runs inside :func:`etcd_errors`, so callers handle one error
family (``Unavailable``, naming what could not be done) instead of aetcd's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import aetcd

from registry.errors import InvalidInput, Unavailable

DEFAULT_ETCD_PORT = 2379
CONNECT_TIMEOUT_SECONDS = 3.0
"""How long :func:`connect_etcd` waits for one endpoint to answer."""

EtcdError = aetcd.ClientError
"""What an etcd call raises when etcd refuses or cannot be reached (before mapping)."""


@contextlib.contextmanager
def etcd_errors(action: str) -> Iterator[None]:
    """Turn etcd's errors raised inside the block into ``Unavailable("cannot <action>: …")``."""
    try:
        yield
    except aetcd.ClientError as error:
        raise Unavailable(f"cannot {action}: {error}") from error


def parse_endpoints(value: str) -> list[tuple[str, int]]:
    """``"http://127.0.0.1:2379,host2:2379"`` → ``[("127.0.0.1", 2379), ("host2", 2379)]``."""
    endpoints: list[tuple[str, int]] = []
    for item in value.split(","):
        text = item.strip()
        if not text:
            continue
        parts = urlsplit(text if "://" in text else f"//{text}")
        if parts.scheme not in ("", "http"):
            # aetcd 1.0 only opens plaintext channels; accepting https would silently downgrade.
            raise InvalidInput(f"etcd endpoint {text!r}: only http:// is supported")
        try:
            port = parts.port or DEFAULT_ETCD_PORT
        except ValueError as error:
            raise InvalidInput(f"etcd endpoint {text!r}: {error}") from error
        if not parts.hostname:
            raise InvalidInput(f"etcd endpoint {text!r} has no host")
        endpoints.append((parts.hostname, port))
    if not endpoints:
        raise InvalidInput("no etcd endpoint given (expected e.g. http://127.0.0.1:2379)")
    return endpoints


async def connect_etcd(
    endpoints: str, *, connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS
) -> aetcd.Client:
    """A connected aetcd client for the first reachable endpoint (comma-separated URLs).

    Raises ``Unavailable`` naming every endpoint tried when none answers.
    """
    failures: list[str] = []
    for host, port in parse_endpoints(endpoints):
        client = aetcd.Client(host=host, port=port)
        try:
            # aetcd's connect() only builds a lazy channel; a real RPC proves the server is there.
            async with asyncio.timeout(connect_timeout_seconds):
                await client.status()
        except (aetcd.ClientError, TimeoutError) as error:
            failures.append(f"{host}:{port} ({type(error).__name__}: {error})")
            await client.close()
            continue
        return client
    raise Unavailable("no etcd endpoint is reachable: " + "; ".join(failures))
