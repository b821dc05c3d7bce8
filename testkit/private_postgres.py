"""A PostgreSQL server of a test's own, which the test may crash and start again.

The machine's PostgreSQL (the one on 5432) is shared by every test, so no test may stop it.
:class:`PrivatePostgres` runs Debian's ``postgres`` binary on a data folder and port of its
own, as the ``postgres`` user (the server refuses to run as root). :meth:`crash` stops it
in PostgreSQL's *immediate* mode — every backend dies at once, nothing is checkpointed, the
next start replays the WAL: what a ``kill -9`` of the server or a power cut does to its
clients, without leaving orphaned backends on the shared memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from testkit.ports import HOST, free_port
from testkit.waiting import wait_listening

POSTGRES_USER = "postgres"
_BINARIES = Path("/usr/lib/postgresql")
START_TIMEOUT_SECONDS = 30.0


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with a server, if any."""
    candidates = sorted(
        (path.parent for path in _BINARIES.glob("*/bin/postgres")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _as_postgres(command: list[str]) -> list[str]:
    """``command`` run as the postgres user through ``setpriv``, which changes user and execs:
    ``Popen(user=...)`` would fork this process — full of gRPC threads whose fork handlers
    then crash the child — where a plain spawn does not."""
    return [
        "setpriv",
        f"--reuid={POSTGRES_USER}",
        f"--regid={POSTGRES_USER}",
        "--init-groups",
        *command,
    ]


class PrivatePostgres:
    """One private PostgreSQL server (see the module docstring); use
    :func:`running_private_postgres`."""

    def __init__(self, bin_dir: Path) -> None:
        self._bin_dir = bin_dir
        # Not under the test's tmp_path: the postgres user must be able to reach it.
        self._home = Path(tempfile.mkdtemp(prefix="sessionmesh-pg-"))
        self._data = self._home / "data"
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self._home / "postgres.log"
        self.restarts = 0

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``postgres`` database (trust authentication)."""
        return f"postgresql+psycopg://{POSTGRES_USER}@{HOST}:{self.port}/postgres"

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    async def init(self) -> None:
        """Create the data folder (``initdb``, trust authentication, no fsync: a crash of
        the server process loses nothing the OS holds)."""
        account = pwd.getpwnam(POSTGRES_USER)
        os.chown(self._home, account.pw_uid, account.pw_gid)
        command = [
            str(self._bin_dir / "initdb"), "-D", str(self._data), "-U", POSTGRES_USER,
            "-A", "trust", "--no-sync", "--no-instructions",
        ]  # fmt: skip
        completed = await asyncio.to_thread(
            subprocess.run, _as_postgres(command), capture_output=True, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(f"initdb failed: {completed.stderr.decode(errors='replace')}")

    async def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.is_running:
            raise RuntimeError("the private PostgreSQL is already running")
        command = [
            str(self._bin_dir / "postgres"), "-D", str(self._data), "-p", str(self.port),
            "-k", str(self._home), "-c", f"listen_addresses={HOST}", "-c", "fsync=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        self._process = await asyncio.to_thread(self._spawn, command)
        process = self._process
        await wait_listening(
            f"{HOST}:{self.port}",
            name="private PostgreSQL",
            exit_code=process.poll,
            log_tail=self.log_tail,
            timeout_seconds=START_TIMEOUT_SECONDS,
        )
        await self._wait_accepting()

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        with self._log_path.open("ab") as log:
            return subprocess.Popen(_as_postgres(command), stdout=log, stderr=subprocess.STDOUT)

    async def _wait_accepting(self) -> None:
        command = [str(self._bin_dir / "pg_isready"), "-h", HOST, "-p", str(self.port)]
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        while True:
            completed = await asyncio.to_thread(
                subprocess.run, command, capture_output=True, check=False
            )
            if completed.returncode == 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"PostgreSQL never accepted connections:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def crash(self) -> None:
        """Stop the server in immediate mode (see the module docstring) and wait for it."""
        await self._stop("immediate")

    async def crash_and_restart(self, *, down_seconds: float) -> None:
        """:meth:`crash`, stay down ``down_seconds``, :meth:`start` again."""
        await self.crash()
        await asyncio.sleep(down_seconds)
        await self.start()
        self.restarts += 1

    async def stop(self) -> None:
        """Stop the server cleanly (fast mode) and remove its folder."""
        with contextlib.suppress(Exception):
            await self._stop("fast")
        await asyncio.to_thread(shutil.rmtree, self._home, True)

    async def _stop(self, mode: str) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        command = [str(self._bin_dir / "pg_ctl"), "stop", "-D", str(self._data), "-m", mode]
        await asyncio.to_thread(
            subprocess.run, _as_postgres(command), capture_output=True, check=False
        )
        try:
            async with asyncio.timeout(10):
                await asyncio.to_thread(process.wait)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)

    def log_tail(self, *, lines: int = 20) -> str:
        """The end of the server's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.asynccontextmanager
async def running_private_postgres() -> AsyncIterator[PrivatePostgres]:
    """A started private PostgreSQL, stopped and removed on exit. Raises ``RuntimeError``
    naming what is missing if the machine has no PostgreSQL server binaries or no
    ``postgres`` user (``apt-get install postgresql``)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError(
            "no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)"
        )
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise RuntimeError("no 'postgres' user to run a private PostgreSQL as") from None
    if os.geteuid() != 0:
        raise RuntimeError(
            "a private PostgreSQL runs as the 'postgres' user, which only root may switch to "
            "(setpriv): run the chaos run as root, as CI does"
        )
    server = PrivatePostgres(bin_dir)
    try:
        await server.init()
        await server.start()
        yield server
    finally:
        await server.stop()
