"""Tracing of a forwarding hop without interceptors: the gateway's fast path.

The gRPC instrumentation's interceptors wrap every call in several Python layers (filters,
context managers, an intercepted call object); on a hop that only forwards bytes they cost
more than the forwarding itself. :class:`HopTracer` does the same job in a few calls: a
SERVER span continues the caller's W3C context, a CLIENT child span stands for the call to
the node, and the child's context is injected into the forwarded metadata. With a
parent-based ratio sampler most spans are non-recording, and then all of this is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from telemetry.tracing import global_provider_tracer

_EMPTY_CONTEXT = otel_context.Context()


class Hop:
    """The two spans of one forwarded call and the trace headers for the next hop."""

    __slots__ = ("_client", "_server", "headers")

    def __init__(
        self, server: trace.Span, client: trace.Span | None, headers: list[tuple[str, str]]
    ):
        self._server = server
        self._client = client
        self.headers = headers
        """``(key, value)`` trace headers to send on to the node."""

    def end(self, code: grpc.StatusCode, details: str = "") -> None:
        """End both spans with the call's final gRPC status."""
        for span in (self._client, self._server):
            if span is None:
                continue
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code != grpc.StatusCode.OK:
                    span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}"))
            span.end()


Attributes = Mapping[str, str]


def rpc_attributes(service: str, method: str) -> Attributes:
    """The semantic-convention attributes of one gRPC method's spans."""
    return MappingProxyType({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})


class HopTracer:
    """Starts :class:`Hop` spans on whatever tracer provider is global at the time."""

    def __init__(self) -> None:
        self._tracer = global_provider_tracer()
        self.fields = frozenset(propagate.get_global_textmap().fields)
        """Metadata keys that carry trace context (``traceparent``, ``tracestate``, …)."""

    def start(self, name: str, attributes: Attributes, carrier: dict[str, str]) -> Hop:
        """Spans for a call named ``name`` whose caller sent ``carrier`` (its trace headers);
        ``attributes`` are the method's, built once (see :func:`rpc_attributes`)."""
        parent = propagate.extract(carrier) if carrier else _EMPTY_CONTEXT
        server = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        server_context = trace.set_span_in_context(server, _EMPTY_CONTEXT)
        headers: dict[str, str] = {}
        if not server.is_recording():
            # Not sampled: no client span either; the next hop learns so from the flags.
            propagate.inject(headers, context=server_context)
            return Hop(server, None, list(headers.items()))
        client = self._tracer.start_span(
            name, context=server_context, kind=SpanKind.CLIENT, attributes=attributes
        )
        propagate.inject(headers, context=trace.set_span_in_context(client, _EMPTY_CONTEXT))
        return Hop(server, client, list(headers.items()))


def with_trace_context(metadata: Any) -> Any:
    """``metadata`` plus the current span's trace headers, when a span is current (a client
    that calls nodes directly propagates its caller's trace this way, without interceptors)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return metadata
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return (*tuple(metadata or ()), *headers.items())
