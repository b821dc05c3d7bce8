"""Conversion of the node's session views and events to ``sessionmesh.v1`` messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from node.events import EventKind, SessionEvent
from node.session_state import SessionState, SessionView
from protos import session_pb2
from registry import MessageStatus

_STATES: dict[str, session_pb2.SessionState] = {
    SessionState.STARTING.value: session_pb2.SESSION_STATE_STARTING,
    SessionState.QR_PENDING.value: session_pb2.SESSION_STATE_QR_PENDING,
    SessionState.AUTHENTICATED.value: session_pb2.SESSION_STATE_AUTHENTICATED,
    SessionState.READY.value: session_pb2.SESSION_STATE_READY,
    SessionState.DISCONNECTED.value: session_pb2.SESSION_STATE_DISCONNECTED,
    SessionState.FAILED.value: session_pb2.SESSION_STATE_FAILED,
    SessionState.STOPPED.value: session_pb2.SESSION_STATE_STOPPED,
}

_MESSAGE_STATUSES: dict[MessageStatus, session_pb2.MessageStatus] = {
    MessageStatus.QUEUED: session_pb2.MESSAGE_STATUS_QUEUED,
    MessageStatus.SENT: session_pb2.MESSAGE_STATUS_SENT,
    MessageStatus.DELIVERED: session_pb2.MESSAGE_STATUS_DELIVERED,
    MessageStatus.READ: session_pb2.MESSAGE_STATUS_READ,
    MessageStatus.FAILED: session_pb2.MESSAGE_STATUS_FAILED,
}


def timestamp(unix_seconds: float) -> Timestamp | None:
    """A protobuf Timestamp, or None for 0 (unset)."""
    if not unix_seconds:
        return None
    value = Timestamp()
    value.FromNanoseconds(int(unix_seconds * 1_000_000_000))
    return value


def session_state(state: str) -> session_pb2.SessionState:
    """The proto enum of a stored state name."""
    return _STATES.get(state, session_pb2.SESSION_STATE_UNSPECIFIED)


def message_status(status: str) -> session_pb2.MessageStatus:
    """The proto enum of an outbox status."""
    parsed = MessageStatus.parse(status)
    return session_pb2.MESSAGE_STATUS_UNSPECIFIED if parsed is None else _MESSAGE_STATUSES[parsed]


def session_message(view: SessionView) -> session_pb2.Session:
    """The ``Session`` message of a view."""
    meta = view.meta
    return session_pb2.Session(
        workspace_id=meta.workspace_id,
        session_id=meta.session_id,
        phone_number=meta.phone_number,
        labels=meta.labels,
        state=session_state(meta.state),
        node_id=meta.node_id,
        qr_code=view.qr_code,
        create_time=timestamp(meta.created_at_unix),
        update_time=timestamp(meta.updated_at_unix),
        disconnect_reason=meta.disconnect_reason,
        disconnect_details=meta.disconnect_details,
        disconnect_time=timestamp(meta.disconnected_at_unix),
        error=meta.error,
    )


def snapshot_event(
    view: SessionView, *, at_unix: float, sequence: int = 0
) -> session_pb2.SessionEvent:
    """The first event of a watch from the start; ``sequence``: the last event it includes."""
    return session_pb2.SessionEvent(
        workspace_id=view.meta.workspace_id,
        session_id=view.meta.session_id,
        event_time=timestamp(at_unix),
        snapshot=session_message(view),
        sequence=sequence,
    )


def event_message(
    workspace_id: str, session_id: str, event: SessionEvent
) -> session_pb2.SessionEvent:
    """The ``SessionEvent`` message of a session event."""
    message = session_pb2.SessionEvent(
        workspace_id=workspace_id,
        session_id=session_id,
        event_time=timestamp(event.at_unix),
        sequence=event.sequence,
    )
    if event.kind is EventKind.STATE_CHANGED:
        message.state_changed.CopyFrom(
            session_pb2.StateChanged(
                state=session_state(event.state),
                previous_state=session_state(event.previous_state),
                reason=event.reason,
            )
        )
    elif event.kind is EventKind.QR_ROTATED:
        message.qr_rotated.CopyFrom(
            session_pb2.QrRotated(
                code=event.qr_code, expire_time=timestamp(event.qr_expire_at_unix)
            )
        )
    elif event.kind is EventKind.MESSAGE_ACK:
        message.message_ack.CopyFrom(
            session_pb2.MessageAck(
                client_message_id=event.message_id, status=message_status(event.status)
            )
        )
    elif event.kind is EventKind.SESSION_MOVED:
        message.session_moved.CopyFrom(
            session_pb2.SessionMoved(previous_node_id=event.previous_node_id, node_id=event.node_id)
        )
    else:
        inbound = session_pb2.InboundMessage(message_id=event.message_id, text=event.text)
        # "from" is a Python keyword, so the field is set by name.
        setattr(inbound, "from", event.sender)
        message.inbound_message.CopyFrom(inbound)
    return message
