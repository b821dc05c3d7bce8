"""The Prometheus endpoint of a process: plain HTTP, or HTTPS only when the process has TLS
configured (a process with TLS opens no plaintext port); and the process's memory limit,
which the default collector's ``process_resident_memory_bytes`` is compared with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import prometheus_client

from registry import TlsMaterial, parse_host_port

_CGROUP_ROOT = Path("/sys/fs/cgroup")

MEMORY_LIMIT = prometheus_client.Gauge(
    "sessionmesh_process_memory_limit_bytes",
    "The most memory this process may use: its cgroup's limit if one is set, else the "
    "machine's memory.",
)


def _cgroup_limit_files() -> Iterator[Path]:
    """The memory limit files of this process's cgroup (v2 and v1), and of the cgroup root a
    container sees as its own."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _hierarchy, controllers, path = fields
        if controllers == "":
            yield _CGROUP_ROOT / path.lstrip("/") / "memory.max"
            yield _CGROUP_ROOT / "memory.max"
        elif "memory" in controllers.split(","):
            yield _CGROUP_ROOT / "memory" / path.lstrip("/") / "memory.limit_in_bytes"
            yield _CGROUP_ROOT / "memory" / "memory.limit_in_bytes"


def memory_limit_bytes() -> float:
    """The lowest of the machine's memory and the cgroup limits set on this process (``max``
    or a huge number means none)."""
    limits = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    for path in _cgroup_limit_files():
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return float(min(limits))


MEMORY_LIMIT.set_function(memory_limit_bytes)


def start_metrics_server(listen: str, *, tls: TlsMaterial | None = None) -> str:
    """Serve Prometheus text at ``http://<listen>/metrics`` (``host:port``, port 0 = any free
    port) in a background thread — ``https://`` with this process's certificate when ``tls``
    is given (a scraper needs the mesh CA; no client certificate is asked for) — and return
    the bound ``host:port``. Empty ``listen`` = off, returns ``""``."""
    if not listen:
        return ""
    host, port = parse_host_port(listen, field="metrics listen address", allow_empty_host=True)
    host = host or "0.0.0.0"
    certificate = key = ca = None
    if tls is not None:
        if not tls.files:
            raise ValueError("the metrics endpoint needs TLS material read from files")
        certificate, key, ca = tls.files
    # prometheus_client >= 0.20 returns (server, thread); the server knows the bound port.
    server, _thread = prometheus_client.start_http_server(
        port, addr=host, certfile=certificate, keyfile=key, client_cafile=ca
    )
    bound_port = int(server.server_port)
    shown_host = f"[{host}]" if ":" in host else host
    return f"{shown_host}:{bound_port}"
