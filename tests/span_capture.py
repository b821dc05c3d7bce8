"""Capturing spans in a test: an in-memory exporter behind OpenTelemetry's global provider,
swapped in and back (OTel lets the global provider be set only once per process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


def swap_global_provider(provider: trace.TracerProvider | None) -> tuple[Once, object]:
    """Install ``provider`` as the global one; what to hand :func:`restore_global_provider`."""
    # OTel's own test utilities reset the set-once guard the same way.
    saved = (trace._TRACER_PROVIDER_SET_ONCE, trace._TRACER_PROVIDER)
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)
    return saved


def restore_global_provider(saved: tuple[Once, object]) -> None:
    """Put back the provider :func:`swap_global_provider` replaced."""
    trace._TRACER_PROVIDER_SET_ONCE, trace._TRACER_PROVIDER = saved  # type: ignore[assignment]


@contextmanager
def captured_spans() -> Iterator[InMemorySpanExporter]:
    """Every span finished inside the block, in an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = swap_global_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        restore_global_provider(saved)
