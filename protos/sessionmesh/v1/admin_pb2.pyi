from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "address", "state", "capacity", "load", "zone", "owned_slot_count", "owned_slot_share", "is_drain_requested")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    OWNED_SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    OWNED_SLOT_SHARE_FIELD_NUMBER: _ClassVar[int]
    IS_DRAIN_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    state: str
    capacity: int
    load: int
    zone: str
    owned_slot_count: int
    owned_slot_share: float
    is_drain_requested: bool
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., capacity: _Optional[int] = ..., load: _Optional[int] = ..., zone: _Optional[str] = ..., owned_slot_count: _Optional[int] = ..., owned_slot_share: _Optional[float] = ..., is_drain_requested: _Optional[bool] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "slot_count")
    NODES_FIELD_NUMBER: _ClassVar[int]
    SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    slot_count: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., slot_count: _Optional[int] = ...) -> None: ...

class DescribeRingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RingMember(_message.Message):
    __slots__ = ("node_id", "weight", "ring_slot_count", "ring_slot_share", "owned_slot_count", "owned_slot_share")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RING_SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    RING_SLOT_SHARE_FIELD_NUMBER: _ClassVar[int]
    OWNED_SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    OWNED_SLOT_SHARE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    weight: int
    ring_slot_count: int
    ring_slot_share: float
    owned_slot_count: int
    owned_slot_share: float
    def __init__(self, node_id: _Optional[str] = ..., weight: _Optional[int] = ..., ring_slot_count: _Optional[int] = ..., ring_slot_share: _Optional[float] = ..., owned_slot_count: _Optional[int] = ..., owned_slot_share: _Optional[float] = ...) -> None: ...

class DescribeRingResponse(_message.Message):
    __slots__ = ("members", "slot_count", "ring_version", "orphan_slot_count")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    RING_VERSION_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[RingMember]
    slot_count: int
    ring_version: int
    orphan_slot_count: int
    def __init__(self, members: _Optional[_Iterable[_Union[RingMember, _Mapping]]] = ..., slot_count: _Optional[int] = ..., ring_version: _Optional[int] = ..., orphan_slot_count: _Optional[int] = ...) -> None: ...

class LocateWorkspaceRequest(_message.Message):
    __slots__ = ("workspace_id",)
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    def __init__(self, workspace_id: _Optional[str] = ...) -> None: ...

class LocateWorkspaceResponse(_message.Message):
    __slots__ = ("workspace_id", "slot", "owner_node_id", "owner_epoch", "ring_node_id", "placement_node_id", "pinned_node_id", "pinned_owner_node_id", "pinned_owner_epoch", "routed_node_id", "routed_address", "session_count", "is_cataloged")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OWNER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    RING_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PINNED_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PINNED_OWNER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PINNED_OWNER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ROUTED_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SESSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    IS_CATALOGED_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    slot: int
    owner_node_id: str
    owner_epoch: int
    ring_node_id: str
    placement_node_id: str
    pinned_node_id: str
    pinned_owner_node_id: str
    pinned_owner_epoch: int
    routed_node_id: str
    routed_address: str
    session_count: int
    is_cataloged: bool
    def __init__(self, workspace_id: _Optional[str] = ..., slot: _Optional[int] = ..., owner_node_id: _Optional[str] = ..., owner_epoch: _Optional[int] = ..., ring_node_id: _Optional[str] = ..., placement_node_id: _Optional[str] = ..., pinned_node_id: _Optional[str] = ..., pinned_owner_node_id: _Optional[str] = ..., pinned_owner_epoch: _Optional[int] = ..., routed_node_id: _Optional[str] = ..., routed_address: _Optional[str] = ..., session_count: _Optional[int] = ..., is_cataloged: _Optional[bool] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class DrainNodeResponse(_message.Message):
    __slots__ = ("node_id", "owned_slot_count")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OWNED_SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    owned_slot_count: int
    def __init__(self, node_id: _Optional[str] = ..., owned_slot_count: _Optional[int] = ...) -> None: ...

class UndrainNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class UndrainNodeResponse(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class MigrateWorkspaceRequest(_message.Message):
    __slots__ = ("workspace_id", "target_node_id")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    target_node_id: str
    def __init__(self, workspace_id: _Optional[str] = ..., target_node_id: _Optional[str] = ...) -> None: ...

class MigrateWorkspaceResponse(_message.Message):
    __slots__ = ("workspace_id", "slot", "target_node_id", "previous_node_id")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    slot: int
    target_node_id: str
    previous_node_id: str
    def __init__(self, workspace_id: _Optional[str] = ..., slot: _Optional[int] = ..., target_node_id: _Optional[str] = ..., previous_node_id: _Optional[str] = ...) -> None: ...

class UnpinWorkspaceRequest(_message.Message):
    __slots__ = ("workspace_id",)
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    def __init__(self, workspace_id: _Optional[str] = ...) -> None: ...

class UnpinWorkspaceResponse(_message.Message):
    __slots__ = ("workspace_id", "previous_pinned_node_id")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PINNED_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    previous_pinned_node_id: str
    def __init__(self, workspace_id: _Optional[str] = ..., previous_pinned_node_id: _Optional[str] = ...) -> None: ...

class PlanRebalanceRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class SlotMove(_message.Message):
    __slots__ = ("slot", "from_node_id", "to_node_id", "workspace_ids", "session_count")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_IDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    slot: int
    from_node_id: str
    to_node_id: str
    workspace_ids: _containers.RepeatedScalarFieldContainer[str]
    session_count: int
    def __init__(self, slot: _Optional[int] = ..., from_node_id: _Optional[str] = ..., to_node_id: _Optional[str] = ..., workspace_ids: _Optional[_Iterable[str]] = ..., session_count: _Optional[int] = ...) -> None: ...

class PlanRebalanceResponse(_message.Message):
    __slots__ = ("moves", "slot_move_count", "workspace_count", "session_count", "dry_run")
    MOVES_FIELD_NUMBER: _ClassVar[int]
    SLOT_MOVE_COUNT_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SESSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[SlotMove]
    slot_move_count: int
    workspace_count: int
    session_count: int
    dry_run: bool
    def __init__(self, moves: _Optional[_Iterable[_Union[SlotMove, _Mapping]]] = ..., slot_move_count: _Optional[int] = ..., workspace_count: _Optional[int] = ..., session_count: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CheckHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeHealth(_message.Message):
    __slots__ = ("node_id", "address", "is_reachable", "status", "sessions", "capacity", "utilisation")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IS_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    UTILISATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    is_reachable: bool
    status: str
    sessions: int
    capacity: int
    utilisation: float
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., is_reachable: _Optional[bool] = ..., status: _Optional[str] = ..., sessions: _Optional[int] = ..., capacity: _Optional[int] = ..., utilisation: _Optional[float] = ...) -> None: ...

class CheckHealthResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeHealth]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeHealth, _Mapping]]] = ...) -> None: ...

class ListQuarantinedRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QuarantinedSession(_message.Message):
    __slots__ = ("workspace_id", "session_id", "node_id", "reason", "since_unix")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    node_id: str
    reason: str
    since_unix: float
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., node_id: _Optional[str] = ..., reason: _Optional[str] = ..., since_unix: _Optional[float] = ...) -> None: ...

class ListQuarantinedResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[QuarantinedSession]
    def __init__(self, sessions: _Optional[_Iterable[_Union[QuarantinedSession, _Mapping]]] = ...) -> None: ...
