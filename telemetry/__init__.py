"""Tracing, metrics and logging set-up shared by every process (entry points configure the SDK)."""

from telemetry.logging import configure_logging
from telemetry.metrics import start_metrics_server
from telemetry.tracing import (
    build_tracer_provider,
    client_interceptors,
    configure_tracing,
    server_interceptors,
)

__all__ = [
    "build_tracer_provider",
    "client_interceptors",
    "configure_logging",
    "configure_tracing",
    "server_interceptors",
    "start_metrics_server",
]
