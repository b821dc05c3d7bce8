"""Who is where: the error family, ids and slots, etcd membership and ownership, the ring and
placement, the catalog. The base of the mesh: ``registry`` uses no other package of ours;
``routing``, ``node``, ``gateway`` and ``client`` use it through this module's names.

The accounts database has its own face, :mod:`registry.accounts`.
"""

from registry.addresses import parse_host_port
from registry.background import call_safely, stop_task
from registry.backoff import Backoff, Retries
from registry.catalog import (
    catalog_counts_of,
    catalog_of,
    catalogued_slots,
    update_catalog,
    update_catalog_counts,
)
from registry.decoding import UndecodableRequestInterceptor
from registry.errors import (
    OWNER_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    AlreadyExists,
    CapacityExhausted,
    InvalidInput,
    MeshError,
    NotFound,
    NotOwner,
    OutOfRange,
    PermissionDenied,
    Quarantined,
    Unauthenticated,
    Unavailable,
    WrongState,
)
from registry.etcd import connect_etcd, parse_endpoints
from registry.etcd_client import EtcdClient
from registry.etcd_tls import (
    ETCD_CACERT_VARIABLE,
    ETCD_CERT_VARIABLE,
    ETCD_KEY_VARIABLE,
    EtcdTls,
    add_etcd_tls_flags,
    etcd_tls_from_args,
    load_etcd_tls,
)
from registry.flags import (
    LOG_FORMATS,
    first_set,
    parse_flags,
    parse_log_format,
    parse_log_level,
    positive_seconds,
    whole_number,
)
from registry.ids import (
    validate_free_text,
    validate_id,
    validate_labels,
    validate_phone_number,
    validate_recipient,
    validate_text,
)
from registry.keys import DEFAULT_CLUSTER, ClusterKeys
from registry.membership import ACTIVE, DRAINING, MembershipWatcher, NodeRecord, NodeRegistration
from registry.messages import MessageStatus
from registry.ownership import (
    Owner,
    OwnershipView,
    acquire_pinned,
    acquire_slot,
    cancel_drain,
    clear_pin,
    release_pinned,
    release_slot,
    request_drain,
    set_pin,
    takeover_epoch,
)
from registry.placement import place_slot
from registry.quarantine import (
    QuarantineRecord,
    quarantine_session,
    quarantined,
    release_quarantine,
)
from registry.request_limits import (
    DEFAULT_GATEWAY_STREAMS_PER_CONNECTION,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_NODE_STREAMS_PER_CONNECTION,
    MIN_MAX_MESSAGE_BYTES,
    forwarding_channel_options,
    server_options,
)
from registry.ring import Ring, RingTable
from registry.slots import DEFAULT_SLOT_COUNT, slot_of
from registry.status import PUSHBACK_METADATA_KEY, from_rpc_error, owner_address, rpc_boundary
from registry.tls import (
    TLS_CA_VARIABLE,
    TLS_CERT_VARIABLE,
    TLS_KEY_VARIABLE,
    TlsMaterial,
    add_tls_flags,
    load_tls,
    tls_from_args,
)

__all__ = [
    "ACTIVE",
    "DEFAULT_CLUSTER",
    "DEFAULT_GATEWAY_STREAMS_PER_CONNECTION",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_NODE_STREAMS_PER_CONNECTION",
    "DEFAULT_SLOT_COUNT",
    "DRAINING",
    "ETCD_CACERT_VARIABLE",
    "ETCD_CERT_VARIABLE",
    "ETCD_KEY_VARIABLE",
    "LOG_FORMATS",
    "MIN_MAX_MESSAGE_BYTES",
    "OWNER_METADATA_KEY",
    "PUSHBACK_METADATA_KEY",
    "RETRY_AFTER_METADATA_KEY",
    "TLS_CA_VARIABLE",
    "TLS_CERT_VARIABLE",
    "TLS_KEY_VARIABLE",
    "AlreadyExists",
    "Backoff",
    "CapacityExhausted",
    "ClusterKeys",
    "EtcdClient",
    "EtcdTls",
    "InvalidInput",
    "MembershipWatcher",
    "MeshError",
    "MessageStatus",
    "NodeRecord",
    "NodeRegistration",
    "NotFound",
    "NotOwner",
    "OutOfRange",
    "Owner",
    "OwnershipView",
    "PermissionDenied",
    "QuarantineRecord",
    "Quarantined",
    "Retries",
    "Ring",
    "RingTable",
    "TlsMaterial",
    "Unauthenticated",
    "Unavailable",
    "UndecodableRequestInterceptor",
    "WrongState",
    "acquire_pinned",
    "acquire_slot",
    "add_etcd_tls_flags",
    "add_tls_flags",
    "call_safely",
    "cancel_drain",
    "catalog_counts_of",
    "catalog_of",
    "catalogued_slots",
    "clear_pin",
    "connect_etcd",
    "etcd_tls_from_args",
    "first_set",
    "forwarding_channel_options",
    "from_rpc_error",
    "load_etcd_tls",
    "load_tls",
    "owner_address",
    "parse_endpoints",
    "parse_flags",
    "parse_host_port",
    "parse_log_format",
    "parse_log_level",
    "place_slot",
    "positive_seconds",
    "quarantine_session",
    "quarantined",
    "release_pinned",
    "release_quarantine",
    "release_slot",
    "request_drain",
    "rpc_boundary",
    "server_options",
    "set_pin",
    "slot_of",
    "stop_task",
    "takeover_epoch",
    "tls_from_args",
    "update_catalog",
    "update_catalog_counts",
    "validate_free_text",
    "validate_id",
    "validate_labels",
    "validate_phone_number",
    "validate_recipient",
    "validate_text",
    "whole_number",
]
