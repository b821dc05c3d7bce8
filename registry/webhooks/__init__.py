"""Webhooks as the mesh stores them: records (URL, event types, signing secrets) in etcd,
the watch-fed :class:`WebhookDirectory` nodes deliver from, the URL and address checks, and
``--webhook-allow-private``. ``node``, ``gateway`` and ``client`` use it through this face.
"""

from registry.webhooks.destinations import (
    DestinationRefused,
    check_destination,
    is_public,
    parse_url,
)
from registry.webhooks.records import (
    DEFAULT_OVERLAP_SECONDS,
    EVENT_TYPES,
    MAX_OVERLAP_SECONDS,
    MESSAGE_ACCEPTED,
    MESSAGE_DELIVERED,
    MESSAGE_FAILED,
    MESSAGE_READ,
    MESSAGE_RECEIVED,
    MESSAGE_SENT,
    SESSION_MOVED,
    SESSION_QR,
    SESSION_STATE_CHANGED,
    WEBHOOK_TEST,
    SigningSecret,
    WebhookRecord,
    new_record,
    new_secret,
    validate_event_types,
    validate_secret,
)
from registry.webhooks.settings import (
    ALLOW_PRIVATE_VARIABLE,
    add_webhook_flags,
    allow_private_from_args,
)
from registry.webhooks.store import (
    WebhookDirectory,
    delete_webhook,
    put_webhook,
    read_webhook,
    rotate_secret,
)

__all__ = [
    "ALLOW_PRIVATE_VARIABLE",
    "DEFAULT_OVERLAP_SECONDS",
    "EVENT_TYPES",
    "MAX_OVERLAP_SECONDS",
    "MESSAGE_ACCEPTED",
    "MESSAGE_DELIVERED",
    "MESSAGE_FAILED",
    "MESSAGE_READ",
    "MESSAGE_RECEIVED",
    "MESSAGE_SENT",
    "SESSION_MOVED",
    "SESSION_QR",
    "SESSION_STATE_CHANGED",
    "WEBHOOK_TEST",
    "DestinationRefused",
    "SigningSecret",
    "WebhookDirectory",
    "WebhookRecord",
    "add_webhook_flags",
    "allow_private_from_args",
    "check_destination",
    "delete_webhook",
    "is_public",
    "new_record",
    "new_secret",
    "parse_url",
    "put_webhook",
    "read_webhook",
    "rotate_secret",
    "validate_event_types",
    "validate_secret",
]
