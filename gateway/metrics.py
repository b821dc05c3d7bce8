"""Prometheus metrics of the gateway.

Module-level collectors (the registry allows one collector per name per process); the
``gateway`` label tells apart several gateways running in one process, as in tests.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

FORWARDED_CALLS = Counter(
    "sessionmesh_gateway_forwarded_calls_total",
    "Calls the gateway answered, by method and final status code.",
    ("gateway", "method", "code"),
)
FORWARD_LATENCY_SECONDS = Histogram(
    "sessionmesh_gateway_forward_latency_seconds",
    "Time from receiving a call to its final status (streams: until the stream is set up).",
    ("gateway", "method"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RETRIES = Counter(
    "sessionmesh_gateway_retries_total",
    "Calls sent again after a retryable status (UNAVAILABLE during a handoff).",
    ("gateway", "method"),
)
REROUTES = Counter(
    "sessionmesh_gateway_reroutes_total",
    "Calls re-sent to the owner a node named in FAILED_PRECONDITION.",
    ("gateway", "method"),
)
ADMIN_CALLS = Counter(
    "sessionmesh_gateway_admin_calls_total",
    "AdminService calls the gateway answered, by method and status code.",
    ("gateway", "method", "code"),
)
