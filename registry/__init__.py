"""Who is where: etcd membership, the ring, the routing table, and the accounts database.

``registry`` uses neither ``node`` nor ``gateway``; they use it.
"""

from registry.errors import (
    AlreadyExists,
    CapacityExhausted,
    InvalidInput,
    MeshError,
    NotFound,
    NotOwner,
    Unavailable,
    abort_with,
    from_rpc_error,
)
from registry.ids import (
    validate_id,
    validate_labels,
    validate_phone_number,
    validate_recipient,
    validate_text,
)
from registry.keys import ClusterKeys
from registry.membership import (
    ACTIVE,
    DRAINING,
    MembershipWatcher,
    NodeRecord,
    NodeRegistration,
    connect_etcd,
    parse_endpoints,
)
from registry.ownership import (
    Owner,
    OwnershipView,
    acquire_pinned,
    acquire_slot,
    add_to_catalog,
    cancel_drain,
    catalog_counts_of,
    catalog_of,
    clear_pin,
    release_pinned,
    release_slot,
    remove_from_catalog,
    request_drain,
    set_pin,
    update_catalog,
)
from registry.placement import can_take_work, place_slot, resolve_node
from registry.routing import Ring, RoutingTable
from registry.slots import DEFAULT_SLOT_COUNT, slot_of

__all__ = [
    "ACTIVE",
    "DEFAULT_SLOT_COUNT",
    "DRAINING",
    "AlreadyExists",
    "CapacityExhausted",
    "ClusterKeys",
    "InvalidInput",
    "MembershipWatcher",
    "MeshError",
    "NodeRecord",
    "NodeRegistration",
    "NotFound",
    "NotOwner",
    "Owner",
    "OwnershipView",
    "Ring",
    "RoutingTable",
    "Unavailable",
    "abort_with",
    "acquire_pinned",
    "acquire_slot",
    "add_to_catalog",
    "can_take_work",
    "cancel_drain",
    "catalog_counts_of",
    "catalog_of",
    "clear_pin",
    "connect_etcd",
    "from_rpc_error",
    "parse_endpoints",
    "place_slot",
    "release_pinned",
    "release_slot",
    "remove_from_catalog",
    "request_drain",
    "resolve_node",
    "set_pin",
    "slot_of",
    "update_catalog",
    "validate_id",
    "validate_labels",
    "validate_phone_number",
    "validate_recipient",
    "validate_text",
]
