"""Traces leave the processes over OTLP/gRPC: a real receiver (the OpenTelemetry collector's
``TraceService``, from ``opentelemetry-proto``) started by the test, a gateway and a node run
as processes with only the standard ``OTEL_*`` variables pointing at it. One call through the
gateway arrives there as one trace, with spans from both processes (told apart by their
``service.name`` resource attribute), each hop the child of the one before."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from protos import session_pb2, session_pb2_grpc
from testkit import MeshSettings, eventually, running_process_mesh, wait_all_ready
from testkit.ports import HOST

GATEWAY_SERVICE = "sessionmesh-gateway"
NODE_SERVICE = "sessionmesh-node"
CREATE_SESSION = "/sessionmesh.v1.SessionService/CreateSession"
GET_SESSION = "/sessionmesh.v1.SessionService/GetSession"
SERVER = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SpanKind.SPAN_KIND_CLIENT
INTERNAL = trace_pb2.Span.SpanKind.SPAN_KIND_INTERNAL
DRIVER_START = "driver.start"
EXPORT_TIMEOUT_SECONDS = 15.0
"""How long the spans of a finished call may take to reach the receiver (batch delay: 0.1 s)."""


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as an exporter sent it: ids in hex, the exporting process's service name."""

    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports = 0

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[
            trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
        ],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        """Keep the request's spans, each with its resource's ``service.name``."""
        self.exports += 1
        for resource_spans in request.resource_spans:
            attributes = {
                attribute.key: attribute.value.string_value
                for attribute in resource_spans.resource.attributes
            }
            service = attributes.get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """Every span received of trace ``trace_id``."""
        return [span for span in self.spans if span.trace_id == trace_id]


@asynccontextmanager
async def running_receiver() -> AsyncIterator[tuple[TraceReceiver, str]]:
    """The receiver on a grpc.aio server on a port the kernel picks; it and its address."""
    receiver = TraceReceiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        yield receiver, f"{HOST}:{port}"
    finally:
        await server.stop(grace=None)


def otel_environment(receiver_address: str) -> tuple[tuple[str, str], ...]:
    """What telemetry/tracing.py reads, set for the mesh's processes (whatever the test run's
    own environment says): export every span over OTLP/gRPC to the receiver, soon."""
    endpoint = f"http://{receiver_address}"
    return (
        ("OTEL_SDK_DISABLED", "false"),
        ("OTEL_SERVICE_NAME", ""),  # empty: each process names itself
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )


def assert_one_tree(spans: list[ReceivedSpan], *, root_parent: str) -> None:
    """Every span's parent is another span of ``spans``, except the root's, which is
    ``root_parent`` (empty: the root started the trace); exactly one root."""
    span_ids = {span.span_id for span in spans}
    assert len(span_ids) == len(spans), f"a span was received twice: {spans}"
    roots = [span for span in spans if span.parent_span_id not in span_ids]
    assert len(roots) == 1, f"not one tree: roots {roots}"
    assert roots[0].parent_span_id == root_parent, roots[0]


def only(spans: list[ReceivedSpan], *, service: str, name: str, kind: int) -> ReceivedSpan:
    """The one span of ``spans`` with that service, name and kind."""
    found = [s for s in spans if s.service == service and s.name == name and s.kind == kind]
    assert len(found) == 1, f"{service} {name} kind {kind}: {found} in {spans}"
    return found[0]


class TestTracesReachAnOtlpReceiver:
    """Gateway and node processes export their spans of one call as one trace."""

    async def test_one_call_through_the_gateway_is_one_trace_across_both_processes(
        self, tmp_path: Path
    ) -> None:
        async with (
            running_receiver() as (receiver, address),
            running_process_mesh(
                tmp_path / "mesh",
                MeshSettings(node_count=1, environment=otel_environment(address)),
            ) as mesh,
            grpc.aio.insecure_channel(mesh.gateway_address) as channel,
        ):
            stub = session_pb2_grpc.SessionServiceStub(channel)
            # A caller without trace context: the gateway starts the trace.
            request = session_pb2.CreateSessionRequest(
                workspace_id="ws-1", session_id="s-1", phone_number="+14155550100"
            )
            await stub.CreateSession(request, timeout=10)

            def created() -> list[ReceivedSpan]:
                spans = [span for span in receiver.spans if span.name == CREATE_SESSION]
                assert spans, "no span yet"
                assert len({span.trace_id for span in spans}) == 1, spans
                trace = receiver.trace(spans[0].trace_id)
                assert_one_tree(trace, root_parent="")
                server = only(trace, service=GATEWAY_SERVICE, name=CREATE_SESSION, kind=SERVER)
                client = only(trace, service=GATEWAY_SERVICE, name=CREATE_SESSION, kind=CLIENT)
                node = only(trace, service=NODE_SERVICE, name=CREATE_SESSION, kind=SERVER)
                assert server.parent_span_id == ""  # the trace's root
                assert client.parent_span_id == server.span_id
                assert node.parent_span_id == client.span_id
                # The new session's driver starts under the node's span: the last hop.
                driver = only(trace, service=NODE_SERVICE, name=DRIVER_START, kind=INTERNAL)
                assert driver.parent_span_id == node.span_id
                return trace

            trace = await eventually(
                created, timeout_seconds=EXPORT_TIMEOUT_SECONDS, message="one trace"
            )
            assert {span.service for span in trace} == {GATEWAY_SERVICE, NODE_SERVICE}

            # A caller with its own trace: the call continues it, on both hops.
            await wait_all_ready(mesh.gateway_address, [("ws-1", "s-1")], timeout_seconds=10)
            trace_id, caller_span_id = secrets.token_hex(16), secrets.token_hex(8)
            traceparent = f"00-{trace_id}-{caller_span_id}-01"
            got = await stub.GetSession(
                session_pb2.GetSessionRequest(workspace_id="ws-1", session_id="s-1"),
                metadata=(("traceparent", traceparent),),
                timeout=10,
            )
            assert got.node_id == "node-1"

            def continued() -> list[ReceivedSpan]:
                trace = receiver.trace(trace_id)
                assert_one_tree(trace, root_parent=caller_span_id)
                server = only(trace, service=GATEWAY_SERVICE, name=GET_SESSION, kind=SERVER)
                client = only(trace, service=GATEWAY_SERVICE, name=GET_SESSION, kind=CLIENT)
                node = only(trace, service=NODE_SERVICE, name=GET_SESSION, kind=SERVER)
                assert server.parent_span_id == caller_span_id
                assert client.parent_span_id == server.span_id
                assert node.parent_span_id == client.span_id
                return trace

            trace = await eventually(
                continued, timeout_seconds=EXPORT_TIMEOUT_SECONDS, message="caller's trace"
            )
            assert {span.service for span in trace} == {GATEWAY_SERVICE, NODE_SERVICE}
