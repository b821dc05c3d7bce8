"""Archives in an S3-compatible store (AWS S3, MinIO, SeaweedFS, Ceph) through boto3.

The endpoint and the credentials come from where every AWS tool reads them:
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (unless an endpoint is given),
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (or a profile, or an instance role), and
``AWS_REGION`` or ``AWS_DEFAULT_REGION``. Buckets are addressed by path
(``endpoint/bucket/key``), which every S3-compatible store serves without DNS per bucket.

boto3 blocks: each call runs in a worker thread. Large files go up and down in parts
(boto3's managed transfer), reporting progress as the parts move. Whatever boto3 raises is
turned into the error family here, in one place, with a message an operator can act on.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from backup._stored import (
    ProgressCallback,
    StoredArchive,
    file_error,
    parse_archive_name,
    progress_on_loop,
    validate_stored_name,
)
from registry import InvalidInput, MeshError, NotFound, PermissionDenied, Unavailable

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

T = TypeVar("T")

_CLIENT_CONFIG = Config(
    s3={"addressing_style": "path"},
    retries={"mode": "standard", "total_max_attempts": 3},
    connect_timeout=5,
    read_timeout=60,
    user_agent_extra="sessionmesh-backup",
)
"""Path-style addressing; a refused or timed-out connection is tried three times in all, so
an unreachable endpoint is reported within seconds, not minutes."""
_TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=8 * 1024 * 1024,
    multipart_chunksize=8 * 1024 * 1024,
    max_concurrency=4,
)
"""Parts of 8 MiB, four at a time: enough to fill a link from a 2-core host."""

_REFUSED_CREDENTIALS = frozenset(
    {
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_MISSING_OBJECT = frozenset({"404", "NoSuchKey", "NotFound"})
_BAD_REQUEST = frozenset(
    {"400", "301", "AuthorizationHeaderMalformed", "InvalidBucketName", "PermanentRedirect"}
)

_BOTO_ERRORS = (
    botocore.exceptions.BotoCoreError,  # no credentials, no connection, bad parameters
    botocore.exceptions.ClientError,  # the store answered with an error
    boto3.exceptions.Boto3Error,  # the transfer manager's wrappers of either
)


def _public_endpoint(endpoint_url: str) -> str:
    """``endpoint_url`` without any user or password in it (safe to print)."""
    parts = urlsplit(endpoint_url)
    if parts.username is None and parts.password is None:
        return endpoint_url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


def _client_error_of(error: BaseException) -> BaseException:
    """The error boto3's transfer manager wraps (it raises its own with the cause attached as
    context, or as ``last_exception``)."""
    wrapped: BaseException | None = None
    if isinstance(error, boto3.exceptions.S3UploadFailedError):
        wrapped = error.__cause__ or error.__context__
    elif isinstance(error, boto3.exceptions.RetriesExceededError):
        wrapped = getattr(error, "last_exception", None)  # not in the stubs
    return error if wrapped is None else wrapped


class S3Target:
    """A bucket, and a prefix in it, holding archives."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        if not bucket or "/" in bucket:
            raise InvalidInput(f"S3 bucket {bucket!r} is invalid: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        """Archives are stored as ``prefix/name`` (just ``name`` without a prefix)."""
        self.endpoint_url = endpoint_url
        """The S3 endpoint; None: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or AWS."""
        self._client_lock = threading.Lock()
        self._s3: S3Client | None = None

    def _endpoint(self) -> str | None:
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

    def describe(self) -> str:
        """``s3://bucket/prefix``, and the endpoint when it is not AWS's (never a secret)."""
        location = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        endpoint = self._endpoint()
        return location if endpoint is None else f"{location} at {_public_endpoint(endpoint)}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _client(self) -> S3Client:
        """The boto3 client, made on first use (in a worker thread: making it reads files)."""
        with self._client_lock:
            if self._s3 is None:
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                try:
                    self._s3 = boto3.session.Session().client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=region or None,
                        config=_CLIENT_CONFIG,
                    )
                except ValueError as error:  # botocore's word for a malformed endpoint URL
                    raise InvalidInput(f"S3 endpoint is invalid: {error}") from error
            return self._s3

    def _mesh_error(self, error: BaseException, *, doing: str, missing: str) -> MeshError:
        """The error family's word for what boto3 raised while ``doing`` something;
        ``missing`` is the message for a 404 (a missing bucket is told apart by its code)."""
        where = self.describe()
        cause = _client_error_of(error)
        if isinstance(cause, botocore.exceptions.ClientError):
            details = cause.response.get("Error", {})
            code = str(details.get("Code", ""))
            status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code == "NoSuchBucket":
                return NotFound(f"cannot {doing}: bucket {self.bucket} does not exist ({where})")
            if code in _MISSING_OBJECT:
                return NotFound(missing)
            if code in _REFUSED_CREDENTIALS:
                return PermissionDenied(
                    f"cannot {doing}: {where} refused the credentials ({code}); check "
                    f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and their access to "
                    f"bucket {self.bucket}"
                )
            message = str(details.get("Message", "")) or code
            if code in _BAD_REQUEST or 400 <= status < 500:
                return InvalidInput(f"cannot {doing}: {where} refused the request: {message}")
            return Unavailable(f"cannot {doing}: {where} failed: {message} ({code})")
        if isinstance(
            cause,
            botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError,
        ):
            return InvalidInput(
                f"cannot {doing}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        if isinstance(
            cause, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError
        ):
            endpoint = self._client().meta.endpoint_url
            return Unavailable(
                f"cannot {doing}: S3 endpoint {_public_endpoint(endpoint)} unreachable: {cause}"
            )
        if isinstance(cause, OSError):
            return file_error(cause, doing=doing)
        return Unavailable(f"cannot {doing}: {where} failed: {cause}")

    async def _run(self, call: Callable[[], T], *, doing: str, missing: str = "") -> T:
        """``call`` in a worker thread, its boto3 errors turned into the error family."""

        def guarded() -> T:
            try:
                return call()
            except MeshError:
                raise
            except _BOTO_ERRORS as error:
                raise self._mesh_error(error, doing=doing, missing=missing) from error
            except OSError as error:
                raise file_error(error, doing=doing) from error

        return await asyncio.to_thread(guarded)

    def _bucket_is_missing(self) -> bool:
        """Whether the bucket is certainly missing (an object's 404 does not say which is);
        False when that cannot be told (a key allowed to read objects but not the bucket)."""
        try:
            self._client().head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as error:
            return error.response.get("Error", {}).get("Code") in _MISSING_OBJECT
        return False

    async def upload(
        self, local: Path, name: str, *, progress: ProgressCallback | None = None
    ) -> None:
        """Store the file ``local`` as ``name`` (in parts when large), replacing an archive of
        that name whole."""
        validate_stored_name(name)
        report = progress_on_loop(progress)

        def upload() -> None:
            if not local.is_file():
                raise InvalidInput(f"cannot upload {local}: no such file")
            self._client().upload_file(
                str(local), self.bucket, self._key(name), Callback=report, Config=_TRANSFER_CONFIG
            )

        await self._run(upload, doing=f"upload {name}")

    async def download(
        self, name: str, local: Path, *, progress: ProgressCallback | None = None
    ) -> None:
        """Copy the archive ``name`` to the file ``local`` (boto3 writes a temporary file
        beside it and renames it)."""
        validate_stored_name(name)
        report = progress_on_loop(progress)

        def download() -> None:
            try:
                self._client().download_file(
                    self.bucket,
                    self._key(name),
                    str(local),
                    Callback=report,
                    Config=_TRANSFER_CONFIG,
                )
            except botocore.exceptions.ClientError as error:
                missing = error.response.get("Error", {}).get("Code") in _MISSING_OBJECT
                if missing and self._bucket_is_missing():
                    raise NotFound(
                        f"cannot download {name}: bucket {self.bucket} does not exist "
                        f"({self.describe()})"
                    ) from error
                raise

        await self._run(
            download, doing=f"download {name}", missing=f"no archive {name} in {self.describe()}"
        )

    async def list(self) -> list[StoredArchive]:
        """The archives under the prefix (names of the backup scheme only, not in deeper
        "folders"), sorted by name."""
        prefix = self._key("")

        def list_archives() -> list[StoredArchive]:
            archives: list[StoredArchive] = []
            pages = self._client().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for stored in page.get("Contents", []):
                    name = stored.get("Key", "")[len(prefix) :]
                    if parse_archive_name(name) is None:
                        continue
                    modified = stored.get("LastModified")
                    archives.append(
                        StoredArchive(
                            name,
                            int(stored.get("Size", 0)),
                            0.0 if modified is None else modified.timestamp(),
                        )
                    )
            return sorted(archives, key=lambda archive: archive.name)

        return await self._run(list_archives, doing=f"list {self.describe()}")

    async def delete(self, name: str) -> None:
        """Delete the archive ``name``; deleting one that is not there does nothing."""
        validate_stored_name(name)

        def delete() -> None:
            self._client().delete_object(Bucket=self.bucket, Key=self._key(name))

        await self._run(delete, doing=f"delete {name}")
