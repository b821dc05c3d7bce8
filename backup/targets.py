"""Where archives are stored: a local folder or an S3-compatible bucket, behind one
:class:`Target` protocol, and which archives retention prunes.

``parse_target`` reads the operator's ``--to``: a folder path, or ``s3://bucket/prefix``
(the prefix optional). Names given to a target are plain file names; archives are named by
:func:`archive_name`, and only names of that scheme are ever listed or pruned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from backup._folder_target import LocalFolderTarget
from backup._retention import select_for_pruning
from backup._s3_target import S3Target
from backup._stored import (
    ProgressCallback,
    StoredArchive,
    archive_name,
    parse_archive_name,
    validate_stored_name,
)
from registry import InvalidInput

__all__ = [
    "LocalFolderTarget",
    "ProgressCallback",
    "S3Target",
    "StoredArchive",
    "Target",
    "archive_name",
    "parse_archive_name",
    "parse_target",
    "select_for_pruning",
    "validate_stored_name",
]

_S3_SCHEME = "s3://"


class Target(Protocol):
    """A place archives are stored. Names are plain file names (``InvalidInput`` otherwise);
    failures are raised as the error family (``NotFound``, ``PermissionDenied``,
    ``Unavailable``, ``InvalidInput``) with a message for the operator."""

    async def upload(
        self, local: Path, name: str, *, progress: ProgressCallback | None = None
    ) -> None:
        """Store the file ``local`` as ``name``: whole, or not at all."""
        ...

    async def download(
        self, name: str, local: Path, *, progress: ProgressCallback | None = None
    ) -> None:
        """Copy the stored ``name`` to the file ``local``; ``NotFound`` if it is not there."""
        ...

    async def list(self) -> list[StoredArchive]:
        """The archives stored (names of the backup scheme only), sorted by name."""
        ...

    async def delete(self, name: str) -> None:
        """Delete the stored ``name``; one that is not there is left at that."""
        ...

    def describe(self) -> str:
        """Where this target is, for messages (never a secret)."""
        ...


def parse_target(text: str, *, endpoint_url: str | None = None) -> Target:
    """The target ``text`` names: ``s3://bucket/prefix`` (``endpoint_url``, if given, instead
    of the AWS_ENDPOINT_URL variables), or else a local folder."""
    text = text.strip()
    if not text:
        raise InvalidInput("backup target is required: a folder, or s3://bucket/prefix")
    if text.lower().startswith(_S3_SCHEME):
        bucket, _, prefix = text[len(_S3_SCHEME) :].partition("/")
        if not bucket:
            raise InvalidInput(f"backup target {text!r} has no bucket: s3://bucket/prefix")
        return S3Target(bucket, prefix, endpoint_url=endpoint_url)
    scheme, separator, _ = text.partition("://")
    if separator and scheme.isalnum():
        raise InvalidInput(
            f"backup target {text!r} is not supported: a folder, or s3://bucket/prefix"
        )
    return LocalFolderTarget(Path(text).expanduser())
