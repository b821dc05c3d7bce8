"""What the accounts store queues for one session, folded so that it keeps one size whatever
the number of calls, and how it is applied to the session's row.

Moves are counted two ways. A placement that carries the session's :class:`MoveHistory` — the
count its own stored record keeps, written by every node that opened it — sets the move
columns to that history: written under the newest epoch it wins whatever order the nodes'
batches land in, so a move is counted once even when its rows reach the database late, out
of order or not at all from the node it left. A placement without one (a session stored before
the history was kept) counts a move when the row names another node, as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from registry.accounts.models import (
    DETAILS_LENGTH,
    ID_LENGTH,
    PATH_LENGTH,
    PHONE_LENGTH,
    REASON_LENGTH,
    STATUS_LENGTH,
    URL_LENGTH,
    WhatsappAccount,
)


@dataclass(frozen=True)
class MoveHistory:
    """How often a session moved to another node, and from where last, as its own stored
    record says at the moment it was opened on the node that reports it."""

    count: int
    previous_node_id: str = ""
    """Empty if it never moved."""
    moved_at: datetime | None = None
    """When it last moved (naive UTC); None if it never moved."""


def storable(value: str, length: int) -> str:
    """``value`` as every backend can store it in a column of ``length`` characters: without
    NUL (PostgreSQL refuses it), lone surrogates replaced (no driver encodes them), clipped
    (a value longer than its column would fail its row on every retry)."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:length]


@dataclass
class Placements:
    """The creations and assignments queued for one session, folded into one."""

    first_node_id: str
    """Where the first folded placement put the session (compared with the row's node)."""
    first_at: datetime
    node_id: str
    """Where the last folded placement put it."""
    node_url: str
    history: MoveHistory | None = None
    """The history the first folded placement carried (None: count against the row)."""
    moves: int = 0
    """Node changes among the folded placements, after the first."""
    previous_node_id: str = ""
    """The node before the last of those changes."""
    moved_at: datetime | None = None
    phone_number: str | None = None
    storage_path: str | None = None

    def then(self, newer: Placements) -> None:
        """Fold ``newer`` (queued after this) into this."""
        self.phone_number = newer.phone_number or self.phone_number
        self.storage_path = newer.storage_path or self.storage_path
        if newer.history is not None:
            # The session's own record already counts every move up to newer's node.
            self.first_node_id, self.first_at = newer.first_node_id, newer.first_at
            self.history, self.moves = newer.history, newer.moves
            self.previous_node_id, self.moved_at = newer.previous_node_id, newer.moved_at
        else:
            has_moved = newer.first_node_id != self.node_id
            self.moves += newer.moves + int(has_moved)
            if newer.moves:
                self.previous_node_id, self.moved_at = newer.previous_node_id, newer.moved_at
            elif has_moved:
                self.previous_node_id, self.moved_at = self.node_id, newer.first_at
        self.node_id, self.node_url = newer.node_id, newer.node_url

    def apply(self, row: WhatsappAccount) -> None:
        """Set the row's node, move and creation columns."""
        if self.phone_number:
            row.phone_number = storable(self.phone_number, PHONE_LENGTH)
        if self.storage_path:
            row.session_storage_path = storable(self.storage_path, PATH_LENGTH)
        first_node_id = storable(self.first_node_id, ID_LENGTH)
        if self.history is not None:
            row.instance_migration_count = self.history.count
            if self.history.previous_node_id:
                row.previous_node_id = storable(self.history.previous_node_id, ID_LENGTH)
            if self.history.moved_at is not None:
                row.last_instance_migration_at = self.history.moved_at
        elif row.assigned_node_id and row.assigned_node_id != first_node_id:
            row.previous_node_id = row.assigned_node_id
            row.instance_migration_count = (row.instance_migration_count or 0) + 1
            row.last_instance_migration_at = self.first_at
        if self.moves:
            row.previous_node_id = storable(self.previous_node_id, ID_LENGTH)
            row.instance_migration_count = (row.instance_migration_count or 0) + self.moves
            row.last_instance_migration_at = self.moved_at
        row.assigned_node_id = storable(self.node_id, ID_LENGTH)
        row.assigned_node_url = storable(self.node_url, URL_LENGTH)


@dataclass
class Pending:
    """Everything queued for one session since the last flush."""

    workspace_id: str
    placements: Placements | None = None
    status: str | None = None
    disconnect: tuple[str, str, datetime] | None = None
    activity_at: datetime | None = None
    storage: tuple[int, datetime] | None = None
    epoch: int = 0
    """The newest owner epoch these changes were made under (0: no fence, always applied)."""
    failures: int = 0
    """Writes in which this session's row failed on its own (see ``AccountStore``)."""

    def place(self, placements: Placements) -> None:
        """Queue a creation or assignment after what is queued."""
        if self.placements is None:
            self.placements = placements
        else:
            self.placements.then(placements)

    def absorb(self, newer: Pending) -> None:
        """Fold changes queued after this batch into it (used when a write is retried)."""
        self.workspace_id = newer.workspace_id
        self.epoch = max(self.epoch, newer.epoch)
        if newer.placements is not None:
            self.place(newer.placements)
        self.status = newer.status or self.status
        self.disconnect = newer.disconnect or self.disconnect
        if newer.activity_at is not None:
            self.activity_at = max(self.activity_at or newer.activity_at, newer.activity_at)
        self.storage = newer.storage or self.storage

    def apply(self, row: WhatsappAccount, now: datetime) -> None:
        """Write these changes into ``row`` (its epoch already checked)."""
        row.owner_epoch = max(row.owner_epoch, self.epoch)
        row.workspace_id = self.workspace_id
        if self.placements is not None:
            self.placements.apply(row)
        if self.status is not None:
            row.status = storable(self.status, STATUS_LENGTH)
        if self.disconnect is not None:
            reason, details, disconnected_at = self.disconnect
            row.disconnect_reason = storable(reason, REASON_LENGTH)
            row.disconnect_details = storable(details, DETAILS_LENGTH)
            row.disconnected_at = disconnected_at
        if self.activity_at is not None:
            row.last_activity_at = max(row.last_activity_at or self.activity_at, self.activity_at)
        if self.storage is not None:
            row.session_file_size_bytes, row.session_storage_verified_at = self.storage
        row.updated_at = now
