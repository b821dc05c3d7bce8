"""Free TCP ports for local processes that cannot take port 0 (etcd, process meshes, the
children of ``make up`` in its test).

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, the same range
every outgoing connection takes its local port from: between picking such a port and the
child process binding it, any connection on the machine may take it. So ports are picked
at random *below* the ephemeral range, where only an explicit bind can take them, and
checked free at the time of picking; a process never gets the same port twice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000
"""Below this sit well-known and registered services (etcd's 2379, Postgres's 5432, …)."""
_DEFAULT_EPHEMERAL_START = 32768
_TRIES = 200
_handed_out: set[int] = set()
"""Ports this process picked already: two picks in a row never give the same port."""


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_START


def _is_free(port: int, host: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(*, span: int = 1, host: str = HOST) -> int:
    """A port such that it and the ``span - 1`` ports after it are free on ``host`` now, from
    outside the kernel's ephemeral range (so no outgoing connection can take them meanwhile).

    Falls back to a kernel-chosen port (``span`` 1 only) when the range below is too small.
    """
    highest = _ephemeral_start() - span
    if highest > _LOWEST_PORT:
        for _ in range(_TRIES):
            port = random.randint(_LOWEST_PORT, highest)
            ports = range(port, port + span)
            if _handed_out.isdisjoint(ports) and all(_is_free(each, host) for each in ports):
                _handed_out.update(ports)
                return port
    if span != 1:
        raise RuntimeError(f"no {span} consecutive free ports below the ephemeral range")
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
