"""Where a webhook may point: an ``http``/``https`` URL whose host resolves only to public
addresses — never loopback, link-local, private, multicast or reserved ones (a tenant must
not make the mesh call into its own network, or a cloud's metadata service) — unless the
process runs with ``--webhook-allow-private`` (local tests, ``make up``).

The check runs when a webhook is set and again while it is delivered to (the node resolves a
host again at least every 10 s: a name may resolve elsewhere later).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from registry.errors import InvalidInput
from registry.webhooks.records import MAX_URL_CHARS, WebhookRecord, new_record

_SCHEMES = ("http", "https")


class DestinationRefused(InvalidInput):
    """The URL's host is (or resolves to) an address webhooks may not reach."""


def parse_url(url: str) -> SplitResult:
    """``url`` split, if it can be a webhook's: ``InvalidInput`` naming what is wrong."""
    if not url or len(url) > MAX_URL_CHARS or not url.isprintable() or " " in url:
        raise InvalidInput(f"a webhook URL is 1 to {MAX_URL_CHARS} printable characters, no space")
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise InvalidInput("a webhook URL starts with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("a webhook URL may not hold a user or password (use the signature)")
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput("the webhook URL's port is not a number from 1 to 65535") from None
    if not parts.hostname or port == 0:
        raise InvalidInput("a webhook URL names a host (and a port from 1 to 65535)")
    if parts.fragment:
        raise InvalidInput("a webhook URL has no #fragment")
    return parts


def is_public(address: str) -> bool:
    """Whether ``address`` (an IP address) is one webhooks may reach without the flag."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal: itself); ``OSError`` if none."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({str(info[4][0]) for info in infos})


async def check_destination(url: str, *, allow_private: bool) -> SplitResult:
    """``url`` split if webhooks may post to it; ``InvalidInput`` for a malformed URL,
    :class:`DestinationRefused` for one that resolves to an address not allowed, ``OSError``
    when its host does not resolve."""
    parts = parse_url(url)
    if allow_private:
        return parts
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(host, port)
    refused = [address for address in addresses if not is_public(address)]
    if refused:
        raise DestinationRefused(
            f"webhook host {host[:253]!r} resolves to {refused[0]}, a loopback, link-local or "
            "private address: refused (a mesh for local use runs with --webhook-allow-private)"
        )
    return parts


async def new_checked_record(
    *,
    workspace_id: str,
    url: str,
    event_types: Iterable[str],
    secret: str,
    allow_private: bool,
) -> tuple[WebhookRecord, str]:
    """A new webhook record and its secret (as :func:`new_record`), once its URL passed
    :func:`check_destination`; ``InvalidInput`` for a URL that is malformed, leads where
    webhooks may not, or does not resolve."""
    record, chosen = new_record(
        workspace_id=workspace_id, url=url, event_types=event_types, secret=secret
    )
    try:
        await check_destination(record.url, allow_private=allow_private)
    except OSError as error:
        raise InvalidInput(f"the webhook URL's host does not resolve: {error}") from None
    return record, chosen
