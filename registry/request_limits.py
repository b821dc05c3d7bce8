"""The largest request any sessionmesh server accepts, the most streams one connection may
have open at once, and the gRPC options that enforce both.

Every server (node, gateway) and the gateway's channels to the nodes take
``--max-message-bytes`` (``MAX_MESSAGE_BYTES``, default 64 KiB): a request past it is
refused by gRPC itself, before any of our code parses it, with ``RESOURCE_EXHAUSTED``. No
valid request comes near it (a message's text is at most 4,096 characters); answers are not
limited by it (a page of ``ListSessions`` may be larger).

``--max-streams-per-connection`` (``MAX_STREAMS_PER_CONNECTION``) is HTTP/2's
``SETTINGS_MAX_CONCURRENT_STREAMS``: one client connection cannot open more calls at once
than that (its further calls wait for a free stream, within their deadlines), so a single
caller cannot hold an unbounded number of watch streams. The gateway forwards every call for
a node over one connection, so a node's default is ten times the gateway's.
"""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
MIN_MAX_MESSAGE_BYTES = 4 * 1024
"""Below this a valid request (a 4,096-character message) could be refused."""


DEFAULT_GATEWAY_STREAMS_PER_CONNECTION = 1000
DEFAULT_NODE_STREAMS_PER_CONNECTION = 10_000


def server_options(
    max_message_bytes: int, *, max_streams_per_connection: int
) -> list[tuple[str, int]]:
    """Options of a server that refuses requests larger than ``max_message_bytes`` and lets a
    connection open at most ``max_streams_per_connection`` calls at once."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", max_streams_per_connection),
    ]


def forwarding_channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options of a channel that forwards requests: none larger than ``max_message_bytes``
    is sent on (the answers it receives keep gRPC's own limit)."""
    return [("grpc.max_send_message_length", max_message_bytes)]
