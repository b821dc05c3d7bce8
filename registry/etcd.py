"""The mesh's etcd client: endpoints, connecting (over every member: :mod:`registry.etcd_client`),
and the one place etcd's errors become ours.

Every etcd call of the packages runs inside :func:`etcd_errors`, so callers handle one error
family (``Unavailable``, naming what could not be done) instead of aetcd's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import aetcd

from registry.errors import InvalidInput, Unavailable
from registry.etcd_client import (
    DEFAULT_CALL_TIMEOUT_SECONDS,
    DEFAULT_HEALTH_INTERVAL_SECONDS,
    EtcdClient,
)
from registry.etcd_tls import EtcdTls

DEFAULT_ETCD_PORT = 2379

EtcdError = aetcd.ClientError
"""What an etcd call raises when etcd refuses or cannot be reached (before mapping)."""


@contextlib.contextmanager
def etcd_errors(action: str) -> Iterator[None]:
    """Turn etcd's errors raised inside the block into ``Unavailable("cannot <action>: …")``."""
    try:
        yield
    except aetcd.ClientError as error:
        raise Unavailable(f"cannot {action}: {error}") from error


def parse_endpoints(value: str, *, tls: EtcdTls | None = None) -> list[tuple[str, int]]:
    """``"http://127.0.0.1:2379,host2:2379"`` → ``[("127.0.0.1", 2379), ("host2", 2379)]``.

    ``https://`` endpoints need ``tls`` (:mod:`registry.etcd_tls`), and with ``tls`` no
    endpoint may be ``http://``: neither a silent downgrade nor a plaintext fallback."""
    endpoints: list[tuple[str, int]] = []
    for item in value.split(","):
        text = item.strip()
        if not text:
            continue
        parts = urlsplit(text if "://" in text else f"//{text}")
        if parts.scheme not in ("", "http", "https"):
            raise InvalidInput(f"etcd endpoint {text!r}: expected http:// or https://")
        if parts.scheme == "https" and tls is None:
            raise InvalidInput(
                f"etcd endpoint {text!r} is https: give --etcd-cacert, --etcd-cert, --etcd-key"
            )
        if parts.scheme == "http" and tls is not None:
            raise InvalidInput(
                f"etcd endpoint {text!r} is plaintext, but etcd TLS is configured: use https://"
            )
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
    endpoints: str,
    *,
    tls: EtcdTls | None = None,
    call_timeout_seconds: float = DEFAULT_CALL_TIMEOUT_SECONDS,
    health_interval_seconds: float = DEFAULT_HEALTH_INTERVAL_SECONDS,
) -> EtcdClient:
    """A client over every endpoint of ``endpoints`` (comma-separated URLs), connected to one
    that answers with a leader, its health checks running (:mod:`registry.etcd_client`);
    over TLS with a client certificate if ``tls`` is given.

    Raises ``Unavailable`` naming the endpoints when none answers.
    """
    parsed = parse_endpoints(endpoints, tls=tls)
    client = EtcdClient(
        parsed,
        call_timeout_seconds=call_timeout_seconds,
        health_interval_seconds=health_interval_seconds,
        credentials=None if tls is None else tls.credentials(),
    )
    if not await client.probe() and not await client.fail_over():
        await client.close()
        named = ", ".join(f"{host}:{port}" for host, port in parsed)
        raise Unavailable(f"no etcd endpoint answers with a leader: {named}")
    client.start_health_checks()
    return client
