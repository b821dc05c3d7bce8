"""The Prometheus endpoint of a process.

CONTRACT (filled in by the gateway/telemetry work; signatures are fixed, node uses them).
"""

from __future__ import annotations


def start_metrics_server(listen: str) -> str:
    """Serve Prometheus text at ``http://<listen>/metrics`` (``host:port``, port 0 = any free
    port) in a background thread; return the bound ``host:port``. Empty ``listen`` = off,
    returns ``""``."""
    raise NotImplementedError
