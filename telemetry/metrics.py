"""The Prometheus endpoint of a process: plain HTTP, or HTTPS only when the process has TLS
configured (a process with TLS opens no plaintext port)."""

from __future__ import annotations

import prometheus_client

from registry import TlsMaterial, parse_host_port


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
