"""Tracing, metrics, health and logging set-up shared by every process (entry points
configure the SDK; libraries only ask for interceptors and tracers)."""

from telemetry.health import HealthServicer, new_health_servicer
from telemetry.hop import Hop, HopTracer, rpc_attributes, with_trace_context
from telemetry.limits import raise_open_file_limit
from telemetry.logging import configure_logging
from telemetry.metrics import start_metrics_server
from telemetry.server_spans import server_interceptors
from telemetry.tracing import build_tracer_provider, client_interceptors, configure_tracing

__all__ = [
    "HealthServicer",
    "Hop",
    "HopTracer",
    "build_tracer_provider",
    "client_interceptors",
    "configure_logging",
    "configure_tracing",
    "new_health_servicer",
    "raise_open_file_limit",
    "rpc_attributes",
    "server_interceptors",
    "start_metrics_server",
    "with_trace_context",
]
