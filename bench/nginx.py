"""Debian's nginx as a gRPC proxy in front of a node: the compiled hop the gateway is compared
with in the same run (``gateway_vs_nginx_throughput``).

It is configured as an operator would put nginx in front of sessionmesh nodes: an upstream
chosen by ``hash $http_x_sessionmesh_workspace consistent`` and ``grpc_pass``, one worker
process (as the gateway is one process), keepalive connections to the upstream, no access
log. It has no routing table: it only sees the node it is given, so the benchmark hands it the
owner of the session it calls — what nginx cannot do by itself (follow owners as slots move)
is what the gateway is for.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from testkit import HOST, free_port

START_TIMEOUT_SECONDS = 10.0
WORKSPACE_HEADER = "x-sessionmesh-workspace"
"""The header nginx hashes on (h2load sends it)."""

_CONFIG = """
daemon off;
master_process on;
worker_processes 1;
error_log {state}/error.log warn;
pid {state}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    upstream sessionmesh_nodes {{
        hash $http_x_sessionmesh_workspace consistent;
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {listen} http2;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
        location / {{
            grpc_pass grpc://sessionmesh_nodes;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """Debian's nginx, or None when it is not installed."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


@contextlib.contextmanager
def nginx_in_front_of(upstream: str) -> Iterator[str]:
    """Run nginx proxying gRPC to ``upstream`` (``host:port``); its listen address."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not found (apt-get install nginx-light)")
    listen = f"{HOST}:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="sessionmesh-nginx-") as state:
        config = Path(state) / "nginx.conf"
        config.write_text(_CONFIG.format(state=state, upstream=upstream, listen=listen))
        process = subprocess.Popen(
            [binary, "-p", state, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_listening(process, listen, Path(state) / "error.log")
            yield listen
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_listening(process: subprocess.Popen[bytes], address: str, log: Path) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
            logged = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"nginx exited ({process.returncode}): {errors}{logged}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {address}")
