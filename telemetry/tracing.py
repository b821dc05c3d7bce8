"""OpenTelemetry tracing for every process: SDK set-up from OTEL_* variables, gRPC interceptors.

Libraries (node, gateway) only ask for interceptors; entry points call
:func:`configure_tracing`. The interceptors resolve the *global* tracer provider at every
span, not when they are built, so a provider installed later (an entry point, a test with
an in-memory exporter) takes effect on servers that already run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.instrumentation.grpc.filters import any_of, negate, service_prefix

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

_INSTRUMENTATION_NAME = "sessionmesh.telemetry"
_UNTRACED_SERVICE_PREFIXES = ("grpc.health.v1.Health", "grpc.reflection.")
_OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_configure_lock = threading.Lock()
_is_configured = False


def _is_sdk_disabled(environ: Mapping[str, str]) -> bool:
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def build_tracer_provider(service_name: str) -> SdkTracerProvider | None:
    """The SDK provider the ``OTEL_*`` variables describe, or None when the SDK is disabled.

    ``OTEL_SERVICE_NAME`` wins over ``service_name``; the sampler comes from
    ``OTEL_TRACES_SAMPLER`` (and ``_ARG``), default parentbased_always_on; an OTLP batch
    exporter is attached only when an OTLP endpoint variable is set.
    """
    environ = os.environ
    if _is_sdk_disabled(environ):
        return None
    # Imported here: only entry points pay for the SDK and the exporter.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    name = environ.get("OTEL_SERVICE_NAME") or service_name
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; TracerProvider reads the sampler.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    if any(environ.get(variable) for variable in _OTLP_ENDPOINT_VARIABLES):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def configure_tracing(service_name: str) -> None:
    """Install the SDK tracer provider once per process, from the standard ``OTEL_*`` variables.

    ``OTEL_SERVICE_NAME`` wins over ``service_name``; ``OTEL_TRACES_SAMPLER`` and its arg are
    honoured; spans go to OTLP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces
    variant) is set; nothing is exported by default. Idempotent.
    """
    global _is_configured  # noqa: PLW0603 - one SDK set-up per process, guarded by a lock
    with _configure_lock:
        if _is_configured:
            return
        _is_configured = True
        provider = build_tracer_provider(service_name)
        if provider is not None:
            trace.set_tracer_provider(provider)


class _GlobalProviderTracer(trace.Tracer):
    """A tracer that follows the global provider: it asks again whenever the provider changed.

    OTel's own ``ProxyTracer`` pins the first real tracer it sees; this one does not, so a
    test (or a late ``configure_tracing``) can swap the global provider under running servers.
    """

    def __init__(self) -> None:
        self._provider: trace.TracerProvider | None = None
        self._tracer: trace.Tracer = trace.NoOpTracer()

    def _current(self) -> trace.Tracer:
        provider = trace.get_tracer_provider()
        if provider is not self._provider:
            # Cached per provider: asking the SDK for a tracer on every span is not free.
            self._provider = provider
            self._tracer = provider.get_tracer(_INSTRUMENTATION_NAME)
        return self._tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        """Start a span on the current global provider's tracer."""
        return self._current().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        """Start a current span on the current global provider's tracer."""
        return self._current().start_as_current_span(*args, **kwargs)


def global_provider_tracer() -> trace.Tracer:
    """A tracer that always uses the current global provider (see ``_GlobalProviderTracer``)."""
    return _GlobalProviderTracer()


class _GlobalTracerProvider(trace.TracerProvider):
    """Hands out :class:`_GlobalProviderTracer` to the gRPC instrumentation."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        """A tracer bound to whatever provider is global when a span starts."""
        return _GlobalProviderTracer()


def _traced_calls() -> Callable[[Any], bool]:
    # Health probes and reflection run every few seconds and would drown the real traces.
    filter_: Callable[[Any], bool] = negate(
        any_of(*(service_prefix(prefix) for prefix in _UNTRACED_SERVICE_PREFIXES))
    )
    return filter_


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that open a client span per outgoing RPC and inject its context."""
    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_GlobalTracerProvider(), filter_=_traced_calls()
    )
    return interceptors
