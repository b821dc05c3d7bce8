"""The manifest of a backup archive: what it holds, file by file (SHA-256 and size), and
what it means (sessions, messages and messages still pending per workspace), with the mesh
and schema versions and the time it was taken. It is the archive's first member."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from registry import InvalidInput

FORMAT = "sessionmesh-backup/1"
"""The archive format this code writes and reads."""
MANIFEST_NAME = "manifest.json"
STORAGE_FOLDER = "storage"
"""Archive members under it are the session storage tree."""
OPERATOR_STATE_NAME = "etcd.json"
ACCOUNTS_NAME = "accounts.jsonl"


@dataclass
class WorkspaceCounts:
    """One workspace in the archive."""

    sessions: int = 0
    messages: int = 0
    pending: int = 0
    """Messages accepted and not yet acknowledged by the network: delivered after a restore."""


@dataclass
class FileRecord:
    """One archive member."""

    sha256: str
    size: int


@dataclass
class Manifest:
    """See the module docstring."""

    cluster: str
    created_at_unix: float
    mesh_version: str
    schema_version: str
    """The accounts DB's Alembic revision the rows were dumped from."""
    format: str = FORMAT
    files: dict[str, FileRecord] = field(default_factory=dict)
    workspaces: dict[str, WorkspaceCounts] = field(default_factory=dict)
    unsettled_sessions: list[str] = field(default_factory=list)
    """Sessions whose files kept changing through every attempt to read them at one moment
    (written while the mesh served them): copied as last read."""
    operator_keys: int = 0
    accounts_rows: int = 0

    def to_json(self) -> bytes:
        """The manifest as JSON."""
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse a manifest; ``InvalidInput`` for anything but this format's."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, not {FORMAT!r}")
            files = {path: FileRecord(**record) for path, record in raw.pop("files").items()}
            workspaces = {
                workspace: WorkspaceCounts(**counts)
                for workspace, counts in raw.pop("workspaces").items()
            }
            return cls(files=files, workspaces=workspaces, **raw)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise InvalidInput(
                f"not a sessionmesh backup: its manifest is wrong ({error})"
            ) from None

    def totals(self) -> dict[str, Any]:
        """Sessions, messages and pending messages over every workspace."""
        return {
            "workspaces": len(self.workspaces),
            "sessions": sum(counts.sessions for counts in self.workspaces.values()),
            "messages": sum(counts.messages for counts in self.workspaces.values()),
            "pending": sum(counts.pending for counts in self.workspaces.values()),
        }
