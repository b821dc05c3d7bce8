"""Who is where: the error family, ids and slots, etcd membership and ownership, the ring and
placement, the catalog. The base of the mesh: ``registry`` uses no other package of ours;
``routing``, ``node``, ``gateway`` and ``client`` use it through this module's names.

The accounts database has its own face, :mod:`registry.accounts`.
"""

from registry.addresses import parse_host_port
from registry.background import call_safely, stop_task
from registry.backoff import Backoff, Retries
from registry.catalog import (
    add_to_catalog,
    catalog_counts_of,
    catalog_of,
    catalogued_slots,
    remove_from_catalog,
    update_catalog,
)
from registry.errors import (
    OWNER_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    AlreadyExists,
    CapacityExhausted,
    InvalidInput,
    MeshError,
    NotFound,
    NotOwner,
    Unavailable,
)
from registry.etcd import connect_etcd, etcd_errors, parse_endpoints
from registry.ids import (
    validate_id,
    validate_labels,
    validate_phone_number,
    validate_recipient,
    validate_text,
)
from registry.keys import DEFAULT_CLUSTER, ClusterKeys
from registry.membership import ACTIVE, DRAINING, MembershipWatcher, NodeRecord, NodeRegistration
from registry.messages import ACK_STATUSES, MessageStatus
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
)
from registry.placement import can_take_work, place_slot
from registry.ring import Ring, RingTable
from registry.slots import DEFAULT_SLOT_COUNT, slot_of
from registry.status import abort_with, from_rpc_error, owner_address, rpc_boundary

__all__ = [
    "ACK_STATUSES",
    "ACTIVE",
    "DEFAULT_CLUSTER",
    "DEFAULT_SLOT_COUNT",
    "DRAINING",
    "OWNER_METADATA_KEY",
    "RETRY_AFTER_METADATA_KEY",
    "AlreadyExists",
    "Backoff",
    "CapacityExhausted",
    "ClusterKeys",
    "InvalidInput",
    "MembershipWatcher",
    "MeshError",
    "MessageStatus",
    "NodeRecord",
    "NodeRegistration",
    "NotFound",
    "NotOwner",
    "Owner",
    "OwnershipView",
    "Retries",
    "Ring",
    "RingTable",
    "Unavailable",
    "abort_with",
    "acquire_pinned",
    "acquire_slot",
    "add_to_catalog",
    "call_safely",
    "can_take_work",
    "cancel_drain",
    "catalog_counts_of",
    "catalog_of",
    "catalogued_slots",
    "clear_pin",
    "connect_etcd",
    "etcd_errors",
    "from_rpc_error",
    "owner_address",
    "parse_endpoints",
    "parse_host_port",
    "place_slot",
    "release_pinned",
    "release_slot",
    "remove_from_catalog",
    "request_drain",
    "rpc_boundary",
    "set_pin",
    "slot_of",
    "stop_task",
    "update_catalog",
    "validate_id",
    "validate_labels",
    "validate_phone_number",
    "validate_recipient",
    "validate_text",
]
