"""Backups and disaster recovery: one consistent, encrypted snapshot of the session storage,
the cluster's operator state in etcd and the accounts DB, to a folder or an S3-compatible
store; verified, pruned, and restored whole or per workspace (``meshctl backup``,
``meshctl restore``)."""

from backup.crypto import generate_key_file, recipients_of
from backup.manifest import Manifest, WorkspaceCounts
from backup.restore import (
    RestoreRequest,
    RestoreResult,
    fetch_archive,
    restore_backup,
    verify_archive,
)
from backup.take import BackupRequest, BackupResult, count_sessions, prune, take_backup
from backup.targets import StoredArchive, Target, parse_target

__all__ = [
    "BackupRequest",
    "BackupResult",
    "Manifest",
    "RestoreRequest",
    "RestoreResult",
    "StoredArchive",
    "Target",
    "WorkspaceCounts",
    "count_sessions",
    "fetch_archive",
    "generate_key_file",
    "parse_target",
    "prune",
    "recipients_of",
    "restore_backup",
    "take_backup",
    "verify_archive",
]
