"""A backup archive on disk: a gzip'd tar of the storage tree, the operator state and the
accounts dump, with the manifest as its last member; encrypted with age unless asked not to.

Reading one checks everything before anything is used: the outer form (age or gzip, else
"not a sessionmesh backup"), the decryption (a wrong key, a damaged or truncated file), every
member (regular files under plain relative names only: a foreign archive cannot write outside
the staging folder), and every member against the manifest (SHA-256 and size, none missing,
none extra).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath

from backup.crypto import decrypt_file, is_encrypted
from backup.manifest import MANIFEST_NAME, FileRecord, Manifest
from registry import InvalidInput

GZIP_MAGIC = b"\x1f\x8b"
COMPRESS_LEVEL = 3
"""gzip level: session logs shrink well at a low level; higher costs CPU for little."""
SUFFIX = ".smbk"


class ArchiveWriter:
    """Writes members to a tar, recording each in the manifest (blocking: use in a thread)."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self._manifest = manifest
        self._tar = tarfile.open(path, "w:gz", compresslevel=COMPRESS_LEVEL)  # noqa: SIM115 - closed by finish()
        self._mtime = int(time.time())

    def add(self, name: str, data: bytes) -> None:
        """Add one member."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self._mtime
        info.mode = 0o600
        self._tar.addfile(info, io.BytesIO(data))
        self._manifest.files[name] = FileRecord(
            sha256=hashlib.sha256(data).hexdigest(), size=len(data)
        )

    def finish(self) -> None:
        """Write the manifest last and close."""
        data = self._manifest.to_json()
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(data)
        info.mtime = self._mtime
        info.mode = 0o600
        self._tar.addfile(info, io.BytesIO(data))
        self._tar.close()


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or name != path.as_posix():
        raise InvalidInput(f"not a sessionmesh backup: it holds a member named {name[:80]!r}")
    return name


def _extract(tar_path: Path, staging: Path) -> Manifest:
    """Extract every member into ``staging``, checking it; the manifest."""
    seen: dict[str, FileRecord] = {}
    manifest_data: bytes | None = None
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                name = _safe_name(member.name)
                if not member.isfile():
                    raise InvalidInput(f"not a sessionmesh backup: {name!r} is not a file")
                source = tar.extractfile(member)
                if source is None:
                    raise InvalidInput(f"not a sessionmesh backup: {name!r} cannot be read")
                data = source.read()
                if name == MANIFEST_NAME:
                    manifest_data = data
                    continue
                if name in seen:
                    raise InvalidInput(f"the archive holds {name!r} twice")
                seen[name] = FileRecord(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError, zlib.error) as error:
        raise InvalidInput(f"the archive is damaged or cut short: {error}") from None
    if manifest_data is None:
        raise InvalidInput("the archive is damaged or cut short: it has no manifest")
    manifest = Manifest.from_json(manifest_data)
    missing = sorted(set(manifest.files) - set(seen))
    extra = sorted(set(seen) - set(manifest.files))
    if missing or extra:
        raise InvalidInput(
            f"the archive does not match its manifest: missing {missing[:5]}, extra {extra[:5]}"
        )
    for name, record in manifest.files.items():
        if seen[name] != record:
            raise InvalidInput(f"the archive is damaged: {name} does not match its checksum")
    return manifest


def open_archive(archive: Path, staging: Path, *, key_file: Path | None) -> Manifest:
    """Decrypt (if need be), check and extract ``archive`` into the empty folder ``staging``;
    its manifest. ``InvalidInput`` for anything wrong, with nothing outside ``staging``
    written (blocking: use in a thread)."""
    try:
        with archive.open("rb") as file:
            head = file.read(32)
    except OSError as error:
        raise InvalidInput(f"cannot read {archive}: {error.strerror}") from None
    tar_path = staging / ".archive.tar.gz"
    if is_encrypted(archive):
        decrypt_file(archive, tar_path, key_file)
    elif head.startswith(GZIP_MAGIC):
        tar_path = archive
    else:
        raise InvalidInput(f"{archive} is not a sessionmesh backup")
    try:
        return _extract(tar_path, staging)
    finally:
        if tar_path != archive:
            tar_path.unlink(missing_ok=True)
