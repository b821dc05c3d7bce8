"""OpenTelemetry tracing for every process: SDK set-up from OTEL_* variables, gRPC interceptors.

CONTRACT (filled in by the gateway/telemetry work; signatures are fixed, node uses them).
"""

from __future__ import annotations

import grpc


def configure_tracing(service_name: str) -> None:
    """Install the SDK tracer provider once per process, from the standard ``OTEL_*`` variables.

    ``OTEL_SERVICE_NAME`` wins over ``service_name``; ``OTEL_TRACES_SAMPLER`` and its arg are
    honoured; spans go to OTLP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces
    variant) is set; nothing is exported by default. Idempotent.
    """
    raise NotImplementedError


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """Interceptors that continue the caller's W3C trace context in a server span per RPC
    (health checks and reflection excluded)."""
    raise NotImplementedError


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that open a client span per outgoing RPC and inject its context."""
    raise NotImplementedError
