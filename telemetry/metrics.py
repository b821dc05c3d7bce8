"""The Prometheus endpoint of a process."""

from __future__ import annotations

import prometheus_client

from registry import parse_host_port


def start_metrics_server(listen: str) -> str:
    """Serve Prometheus text at ``http://<listen>/metrics`` (``host:port``, port 0 = any free
    port) in a background thread; return the bound ``host:port``. Empty ``listen`` = off,
    returns ``""``."""
    if not listen:
        return ""
    host, port = parse_host_port(listen, field="metrics listen address", allow_empty_host=True)
    host = host or "0.0.0.0"
    # prometheus_client >= 0.20 returns (server, thread); the server knows the bound port.
    server, _thread = prometheus_client.start_http_server(port, addr=host)
    bound_port = int(server.server_port)
    shown_host = f"[{host}]" if ":" in host else host
    return f"{shown_host}:{bound_port}"
