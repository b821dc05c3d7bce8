"""What the session storage holds about one session: its meta and its accepted messages."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from registry import MessageStatus


@dataclass(frozen=True)
class SessionMeta:
    """What a session's ``meta.json`` records."""

    workspace_id: str
    session_id: str
    phone_number: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    node_id: str = ""
    """The node that last ran the session."""
    state: str = "starting"
    """The last known state, lower case (``ready``, ``stopped``…)."""
    created_at_unix: float = 0.0
    updated_at_unix: float = 0.0
    disconnect_reason: str = ""
    disconnect_details: str = ""
    disconnected_at_unix: float = 0.0
    """0 when it never disconnected."""
    error: str = ""
    """Why it FAILED, if it did."""
    deleted: bool = False
    """DeleteSession ran: never restored; the folder stays as a record."""
    owner_epoch: int = 0
    """Epoch (ownership key create revision) of the owner that last restored or created it: a
    node whose epoch is older must not write any more (see ``node.fencing``)."""
    instance_migration_count: int | None = None
    """How many times it moved to another node (an open on a node other than ``node_id``);
    None in a meta written before the count was kept: the accounts DB then counts by itself."""
    previous_node_id: str = ""
    """The node it last moved from; empty if it never moved."""
    last_instance_migration_at_unix: float = 0.0
    """When it last moved; 0 if it never did."""

    def changed(self, **changes: Any) -> SessionMeta:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


@dataclass(frozen=True)
class OutboxEntry:
    """One accepted message in a session's outbox."""

    client_message_id: str
    to: str
    text: str
    status: MessageStatus
    """Where the message is on its way (stored as its name, ``QUEUED``…)."""
    accepted_at_unix: float
    seq: int
    """Acceptance order within the session: delivery follows it."""
    accepted_by_node_id: str = ""

    def __post_init__(self) -> None:
        # Read back from JSON the status is a plain string: hold it as the enum.
        object.__setattr__(self, "status", MessageStatus(self.status))
