"""Archives in a local folder (a disk, or a mounted NFS or SMB share).

A file appears whole or not at all: it is written to a dot-named temporary file in the same
folder, flushed to disk, renamed over its name, and the folder itself flushed, so a crash or
a full disk never leaves a half archive under an archive's name. File work runs in a worker
thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

from backup._stored import (
    ProgressCallback,
    StoredArchive,
    file_error,
    parse_archive_name,
    progress_on_loop,
    validate_stored_name,
)
from registry import InvalidInput, NotFound

_CHUNK_BYTES = 1024 * 1024


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (the folder's entry, not only the file's data)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def copy_atomically(source: Path, destination: Path, progress: ProgressCallback | None) -> None:
    """Copy ``source`` to ``destination`` through a temporary file beside it, flushed and
    renamed: ``destination`` holds the old file or the whole new one, never a part."""
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.partial")
    try:
        with source.open("rb") as reader, temporary.open("xb") as writer:
            while chunk := reader.read(_CHUNK_BYTES):
                writer.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temporary, destination)
        _fsync_directory(destination.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


class LocalFolderTarget:
    """A folder holding archives side by side (created on the first upload)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        """Where the archives are."""

    def describe(self) -> str:
        """The folder, for messages."""
        return f"folder {self.folder}"

    def _check_folder(self) -> None:
        if not self.folder.exists():
            raise NotFound(f"backup folder {self.folder} does not exist")
        if not self.folder.is_dir():
            raise InvalidInput(f"backup target {self.folder} is not a folder")

    def _upload(self, local: Path, name: str, progress: ProgressCallback | None) -> None:
        if not local.is_file():
            raise InvalidInput(f"cannot upload {local}: no such file")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            copy_atomically(local, self.folder / name, progress)
        except FileExistsError as error:  # mkdir: a file stands where the folder should be
            raise InvalidInput(f"backup target {self.folder} is not a folder") from error
        except OSError as error:
            raise file_error(error, doing=f"store {name} in {self.folder}") from error

    async def upload(
        self, local: Path, name: str, *, progress: ProgressCallback | None = None
    ) -> None:
        """Store the file ``local`` as ``name``, replacing an archive of that name whole."""
        validate_stored_name(name)
        await asyncio.to_thread(self._upload, local, name, progress_on_loop(progress))

    def _download(self, name: str, local: Path, progress: ProgressCallback | None) -> None:
        self._check_folder()
        stored = self.folder / name
        if not stored.is_file():
            raise NotFound(f"no archive {name} in {self.describe()}")
        try:
            copy_atomically(stored, local, progress)
        except OSError as error:
            raise file_error(error, doing=f"copy {name} to {local}") from error

    async def download(
        self, name: str, local: Path, *, progress: ProgressCallback | None = None
    ) -> None:
        """Copy the archive ``name`` to the file ``local`` (whole, or not at all)."""
        validate_stored_name(name)
        await asyncio.to_thread(self._download, name, local, progress_on_loop(progress))

    def _list(self) -> list[StoredArchive]:
        self._check_folder()
        archives: list[StoredArchive] = []
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if parse_archive_name(entry.name) is None or not entry.is_file():
                        continue
                    stat = entry.stat()
                    archives.append(StoredArchive(entry.name, stat.st_size, stat.st_mtime))
        except OSError as error:
            raise file_error(error, doing=f"list {self.folder}") from error
        return sorted(archives, key=lambda archive: archive.name)

    async def list(self) -> list[StoredArchive]:
        """The archives in the folder (names of the backup scheme only), sorted by name."""
        return await asyncio.to_thread(self._list)

    def _delete(self, name: str) -> None:
        try:
            (self.folder / name).unlink(missing_ok=True)
            _fsync_directory(self.folder)
        except FileNotFoundError:  # the folder itself is gone: nothing to delete
            return
        except OSError as error:
            raise file_error(error, doing=f"delete {name} from {self.folder}") from error

    async def delete(self, name: str) -> None:
        """Delete the archive ``name``; deleting one that is not there does nothing."""
        validate_stored_name(name)
        await asyncio.to_thread(self._delete, name)
