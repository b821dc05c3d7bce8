"""Quarantined sessions: stored sessions a node could not restore (a ``meta.json`` that does
not parse, credentials that are not an object, a catalog entry naming an impossible
workspace), recorded in etcd so every node and ``meshctl quarantine`` see them.

One bad session must not keep the other tenants of its slot down: the restore records it
here and goes on with the rest. The node that owns the slot tries it again now and then; a
session that restores is taken out. A record has no lease — it outlives the node that wrote it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import aetcd

from registry.etcd import etcd_errors
from registry.keys import ClusterKeys

MAX_REASON_LENGTH = 500
"""A reason is cut to this many characters (it quotes a parser's error)."""


@dataclass(frozen=True)
class QuarantineRecord:
    """Why a session could not be restored, by whom, since when."""

    workspace_id: str
    session_id: str
    """Empty when the whole workspace could not be read (a bad catalog entry)."""
    node_id: str
    reason: str
    since_unix: float

    def to_json(self) -> bytes:
        """The record as stored."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> QuarantineRecord:
        """A stored record (``ValueError`` if it is not one)."""
        raw = json.loads(data)
        try:
            return cls(
                workspace_id=str(raw["workspace_id"]),
                session_id=str(raw["session_id"]),
                node_id=str(raw["node_id"]),
                reason=str(raw["reason"]),
                since_unix=float(raw["since_unix"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a quarantine record: {error}") from error


async def quarantine_session(
    etcd: aetcd.Client,
    keys: ClusterKeys,
    *,
    workspace_id: str,
    session_id: str,
    node_id: str,
    reason: str,
) -> None:
    """Record that ``workspace_id/session_id`` could not be restored, and why."""
    record = QuarantineRecord(
        workspace_id=workspace_id,
        session_id=session_id,
        node_id=node_id,
        reason=reason[:MAX_REASON_LENGTH],
        since_unix=time.time(),
    )
    with etcd_errors(f"quarantine {workspace_id}/{session_id}"):
        await etcd.put(keys.quarantine(workspace_id, session_id), record.to_json())


async def release_quarantine(
    etcd: aetcd.Client, keys: ClusterKeys, *, workspace_id: str, session_id: str
) -> None:
    """Take ``workspace_id/session_id`` out of quarantine (it restored)."""
    with etcd_errors(f"release {workspace_id}/{session_id} from quarantine"):
        await etcd.delete(keys.quarantine(workspace_id, session_id))


async def quarantined(etcd: aetcd.Client, keys: ClusterKeys) -> list[QuarantineRecord]:
    """Every quarantined session, by workspace and session id (unreadable records skipped)."""
    with etcd_errors("list quarantined sessions"):
        items = await etcd.get_prefix(keys.quarantine_prefix)
    records: list[QuarantineRecord] = []
    for item in items:
        try:
            records.append(QuarantineRecord.from_json(item.value))
        except ValueError:
            continue
    return sorted(records, key=lambda record: (record.workspace_id, record.session_id))
