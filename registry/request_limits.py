"""The largest request any sessionmesh server accepts, and the gRPC options that enforce it.

Every server (node, gateway) and the gateway's channels to the nodes take
``--max-message-bytes`` (``MAX_MESSAGE_BYTES``, default 64 KiB): a request past it is
refused by gRPC itself, before any of our code parses it, with ``RESOURCE_EXHAUSTED``. No
valid request comes near it (a message's text is at most 4,096 characters); answers are not
limited by it (a page of ``ListSessions`` may be larger).
"""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
MIN_MAX_MESSAGE_BYTES = 4 * 1024
"""Below this a valid request (a 4,096-character message) could be refused."""


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options of a server that refuses requests larger than ``max_message_bytes``."""
    return [("grpc.max_receive_message_length", max_message_bytes)]


def forwarding_channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options of a channel that forwards requests: none larger than ``max_message_bytes``
    is sent on (the answers it receives keep gRPC's own limit)."""
    return [("grpc.max_send_message_length", max_message_bytes)]
