import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_STARTING: _ClassVar[SessionState]
    SESSION_STATE_QR_PENDING: _ClassVar[SessionState]
    SESSION_STATE_AUTHENTICATED: _ClassVar[SessionState]
    SESSION_STATE_READY: _ClassVar[SessionState]
    SESSION_STATE_DISCONNECTED: _ClassVar[SessionState]
    SESSION_STATE_FAILED: _ClassVar[SessionState]
    SESSION_STATE_STOPPED: _ClassVar[SessionState]

class MessageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_STATUS_UNSPECIFIED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_QUEUED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_SENT: _ClassVar[MessageStatus]
    MESSAGE_STATUS_DELIVERED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_READ: _ClassVar[MessageStatus]
    MESSAGE_STATUS_FAILED: _ClassVar[MessageStatus]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_STARTING: SessionState
SESSION_STATE_QR_PENDING: SessionState
SESSION_STATE_AUTHENTICATED: SessionState
SESSION_STATE_READY: SessionState
SESSION_STATE_DISCONNECTED: SessionState
SESSION_STATE_FAILED: SessionState
SESSION_STATE_STOPPED: SessionState
MESSAGE_STATUS_UNSPECIFIED: MessageStatus
MESSAGE_STATUS_QUEUED: MessageStatus
MESSAGE_STATUS_SENT: MessageStatus
MESSAGE_STATUS_DELIVERED: MessageStatus
MESSAGE_STATUS_READ: MessageStatus
MESSAGE_STATUS_FAILED: MessageStatus

class Session(_message.Message):
    __slots__ = ("workspace_id", "session_id", "phone_number", "labels", "state", "node_id", "qr_code", "create_time", "update_time", "disconnect_reason", "disconnect_details", "disconnect_time", "error")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    QR_CODE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_DETAILS_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    phone_number: str
    labels: _containers.ScalarMap[str, str]
    state: SessionState
    node_id: str
    qr_code: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    disconnect_reason: str
    disconnect_details: str
    disconnect_time: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., phone_number: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[SessionState, str]] = ..., node_id: _Optional[str] = ..., qr_code: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., disconnect_reason: _Optional[str] = ..., disconnect_details: _Optional[str] = ..., disconnect_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("workspace_id", "session_id", "phone_number", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    phone_number: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., phone_number: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("workspace_id", "session_id")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("workspace_id", "page_size", "page_token")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    page_size: int
    page_token: str
    def __init__(self, workspace_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("workspace_id", "session_id", "reason", "details")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    reason: str
    details: str
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., reason: _Optional[str] = ..., details: _Optional[str] = ...) -> None: ...

class GetQrCodeRequest(_message.Message):
    __slots__ = ("workspace_id", "session_id")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class QrCode(_message.Message):
    __slots__ = ("workspace_id", "session_id", "code", "expire_time")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    code: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., code: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RequestPairingCodeRequest(_message.Message):
    __slots__ = ("workspace_id", "session_id", "phone_number")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    phone_number: str
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., phone_number: _Optional[str] = ...) -> None: ...

class PairingCode(_message.Message):
    __slots__ = ("workspace_id", "session_id", "code", "expire_time")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    code: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., code: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("workspace_id", "session_id", "client_message_id", "to", "text")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    client_message_id: str
    to: str
    text: str
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., client_message_id: _Optional[str] = ..., to: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("workspace_id", "session_id", "client_message_id", "status", "node_id", "accept_time", "duplicate")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_TIME_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    client_message_id: str
    status: MessageStatus
    node_id: str
    accept_time: _timestamp_pb2.Timestamp
    duplicate: bool
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., client_message_id: _Optional[str] = ..., status: _Optional[_Union[MessageStatus, str]] = ..., node_id: _Optional[str] = ..., accept_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class WatchSessionRequest(_message.Message):
    __slots__ = ("workspace_id", "session_id", "after_sequence")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    after_sequence: int
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("workspace_id", "session_id", "event_time", "snapshot", "state_changed", "qr_rotated", "message_ack", "inbound_message", "session_moved", "sequence")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    QR_ROTATED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ACK_FIELD_NUMBER: _ClassVar[int]
    INBOUND_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SESSION_MOVED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    session_id: str
    event_time: _timestamp_pb2.Timestamp
    snapshot: Session
    state_changed: StateChanged
    qr_rotated: QrRotated
    message_ack: MessageAck
    inbound_message: InboundMessage
    session_moved: SessionMoved
    sequence: int
    def __init__(self, workspace_id: _Optional[str] = ..., session_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., snapshot: _Optional[_Union[Session, _Mapping]] = ..., state_changed: _Optional[_Union[StateChanged, _Mapping]] = ..., qr_rotated: _Optional[_Union[QrRotated, _Mapping]] = ..., message_ack: _Optional[_Union[MessageAck, _Mapping]] = ..., inbound_message: _Optional[_Union[InboundMessage, _Mapping]] = ..., session_moved: _Optional[_Union[SessionMoved, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class StateChanged(_message.Message):
    __slots__ = ("state", "previous_state", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: SessionState
    previous_state: SessionState
    reason: str
    def __init__(self, state: _Optional[_Union[SessionState, str]] = ..., previous_state: _Optional[_Union[SessionState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class QrRotated(_message.Message):
    __slots__ = ("code", "expire_time")
    CODE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    code: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, code: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MessageAck(_message.Message):
    __slots__ = ("client_message_id", "status")
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    client_message_id: str
    status: MessageStatus
    def __init__(self, client_message_id: _Optional[str] = ..., status: _Optional[_Union[MessageStatus, str]] = ...) -> None: ...

class SessionMoved(_message.Message):
    __slots__ = ("previous_node_id", "node_id")
    PREVIOUS_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    previous_node_id: str
    node_id: str
    def __init__(self, previous_node_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class InboundMessage(_message.Message):
    __slots__ = ("message_id", "text")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    text: str
    def __init__(self, message_id: _Optional[str] = ..., text: _Optional[str] = ..., **kwargs) -> None: ...
