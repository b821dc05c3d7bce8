"""One trace spans client → gateway → node; the SDK is set up from OTEL_* variables only."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import aetcd
import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind

import telemetry.tracing
from client.proxyless import ProxylessClient
from gateway import GatewayConfig, GatewayServer, start_gateway
from protos import session_pb2
from registry import (
    connect_etcd,
)
from registry.auth import (
    AUTH_OFF_SETTINGS,
)
from telemetry import (
    build_tracer_provider,
    client_interceptors,
    configure_logging,
    configure_tracing,
    start_metrics_server,
)
from testkit import eventually
from tests.fakes import WATCH_EVENT_COUNT, RunningEchoNode, start_echo_node
from tests.probes import stub_of
from tests.span_capture import captured_spans, restore_global_provider, swap_global_provider

GET_SESSION = "/sessionmesh.v1.SessionService/GetSession"
WATCH_SESSION = "/sessionmesh.v1.SessionService/WatchSession"


@pytest.fixture(scope="module")
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter behind the global SDK provider, for this module only."""
    with captured_spans() as exporter:
        yield exporter


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    """The exporter, emptied before and after the test."""
    span_exporter.clear()
    yield span_exporter
    span_exporter.clear()


@pytest.fixture
async def traced_cluster(
    etcd_url: str, cluster_name: str
) -> AsyncIterator[tuple[GatewayServer, RunningEchoNode]]:
    """A gateway and one traced echo node in this test's cluster."""
    etcd: aetcd.Client = await connect_etcd(etcd_url)
    node = await start_echo_node(etcd, cluster_name, "n1")
    gateway = await start_gateway(
        GatewayConfig(
            listen_address="127.0.0.1:0",
            etcd_endpoints=etcd_url,
            cluster=cluster_name,
            auth=AUTH_OFF_SETTINGS,
        )
    )
    await eventually(lambda: gateway.router.ring.ring.node_ids == ["n1"])
    yield gateway, node
    await gateway.stop(grace_seconds=0.5)
    await node.stop()
    await etcd.close()


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _child_of(spans: list[ReadableSpan], parent: ReadableSpan, kind: SpanKind) -> ReadableSpan:
    children = [
        span for span in spans if _parent_id(span) == parent.context.span_id and span.kind == kind
    ]
    assert len(children) == 1, f"expected one {kind} child of {parent.name}, got {children}"
    return children[0]


class TestTracePropagation:
    """Client, gateway and node spans form one trace with the right parents."""

    async def test_one_trace_across_the_gateway(
        self, spans: InMemorySpanExporter, traced_cluster: tuple[GatewayServer, RunningEchoNode]
    ) -> None:
        gateway, _ = traced_cluster
        tracer = trace.get_tracer("test")
        async with grpc.aio.insecure_channel(
            gateway.address, interceptors=client_interceptors()
        ) as channel:
            with tracer.start_as_current_span("caller") as caller:
                await stub_of(channel).GetSession(
                    session_pb2.GetSessionRequest(workspace_id="ws-1", session_id="s1"), timeout=5
                )
        await eventually(
            lambda: len([s for s in spans.get_finished_spans() if s.name == GET_SESSION]) == 4,
            message="four GetSession spans finished",
        )
        finished = list(spans.get_finished_spans())
        trace_id = caller.get_span_context().trace_id
        assert {span.context.trace_id for span in finished} == {trace_id}
        root = next(span for span in finished if span.name == "caller")
        client = _child_of(finished, root, SpanKind.CLIENT)
        gateway_server = _child_of(finished, client, SpanKind.SERVER)
        gateway_client = _child_of(finished, gateway_server, SpanKind.CLIENT)
        node_server = _child_of(finished, gateway_client, SpanKind.SERVER)
        assert {client.name, gateway_server.name, gateway_client.name, node_server.name} == {
            GET_SESSION
        }

    async def test_a_caller_that_did_not_sample_gets_no_span_on_any_hop(
        self, spans: InMemorySpanExporter, traced_cluster: tuple[GatewayServer, RunningEchoNode]
    ) -> None:
        gateway, _ = traced_cluster
        unsampled = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id=0x1234, span_id=0x5678, is_remote=False, trace_flags=trace.TraceFlags(0)
            )
        )
        async with grpc.aio.insecure_channel(
            gateway.address, interceptors=client_interceptors()
        ) as channel:
            with trace.use_span(unsampled):
                await stub_of(channel).GetSession(
                    session_pb2.GetSessionRequest(workspace_id="ws-1", session_id="s1"), timeout=5
                )
            # A sampled call afterwards: once its spans are in, the unsampled one's would be.
            with trace.get_tracer("test").start_as_current_span("sampled-caller"):
                await stub_of(channel).GetSession(
                    session_pb2.GetSessionRequest(workspace_id="ws-1", session_id="s1"), timeout=5
                )
        await eventually(
            lambda: len([s for s in spans.get_finished_spans() if s.name == GET_SESSION]) >= 4,
            message="the sampled call's four GetSession spans finished",
        )
        finished = spans.get_finished_spans()
        assert all(span.context.trace_id != 0x1234 for span in finished)
        assert len([s for s in finished if s.name == GET_SESSION]) == 4

    async def test_the_proxyless_client_carries_the_callers_trace_to_the_node(
        self,
        spans: InMemorySpanExporter,
        traced_cluster: tuple[GatewayServer, RunningEchoNode],
        etcd_url: str,
        cluster_name: str,
    ) -> None:
        async with await ProxylessClient.connect(
            etcd_endpoints=etcd_url, cluster=cluster_name
        ) as client:
            with trace.get_tracer("test").start_as_current_span("caller") as caller:
                await client.GetSession(
                    session_pb2.GetSessionRequest(workspace_id="ws-1", session_id="s1"), timeout=5
                )
        await eventually(
            lambda: any(s.name == GET_SESSION for s in spans.get_finished_spans()),
            message="the node's GetSession span finished",
        )
        finished = list(spans.get_finished_spans())
        node_server = next(span for span in finished if span.name == GET_SESSION)
        assert node_server.kind == SpanKind.SERVER
        assert node_server.context.trace_id == caller.get_span_context().trace_id
        assert _parent_id(node_server) == caller.get_span_context().span_id

    async def test_one_trace_across_the_gateway_for_a_stream(
        self, spans: InMemorySpanExporter, traced_cluster: tuple[GatewayServer, RunningEchoNode]
    ) -> None:
        gateway, _ = traced_cluster
        async with grpc.aio.insecure_channel(
            gateway.address, interceptors=client_interceptors()
        ) as channel:
            with trace.get_tracer("test").start_as_current_span("caller"):
                events = [
                    event
                    async for event in stub_of(channel).WatchSession(
                        session_pb2.WatchSessionRequest(workspace_id="ws-1", session_id="s1"),
                        timeout=5,
                    )
                ]
        assert len(events) == WATCH_EVENT_COUNT
        await eventually(
            lambda: len([s for s in spans.get_finished_spans() if s.name == WATCH_SESSION]) == 4,
            message="four WatchSession spans finished",
        )
        finished = list(spans.get_finished_spans())
        assert len({span.context.trace_id for span in finished}) == 1
        root = next(span for span in finished if span.name == "caller")
        client = _child_of(finished, root, SpanKind.CLIENT)
        gateway_server = _child_of(finished, client, SpanKind.SERVER)
        gateway_client = _child_of(finished, gateway_server, SpanKind.CLIENT)
        _child_of(finished, gateway_client, SpanKind.SERVER)

    async def test_health_checks_are_not_traced(
        self, spans: InMemorySpanExporter, traced_cluster: tuple[GatewayServer, RunningEchoNode]
    ) -> None:
        gateway, _ = traced_cluster
        async with grpc.aio.insecure_channel(
            gateway.address, interceptors=client_interceptors()
        ) as channel:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        assert spans.get_finished_spans() == ()


@pytest.fixture
def clean_otel_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the outer environment leaks into the test."""
    for variable in (
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def _processors(provider: TracerProvider) -> tuple[object, ...]:
    # The SDK keeps its processors in a multi-processor; there is no public accessor.
    return tuple(provider._active_span_processor._span_processors)


class TestConfigureTracing:
    """The SDK provider follows the standard OTEL_* variables and exports nothing by default."""

    def test_exports_nothing_by_default(self, clean_otel_environment: pytest.MonkeyPatch) -> None:
        provider = build_tracer_provider("sessionmesh-gateway")
        assert provider is not None
        assert _processors(provider) == ()
        assert provider.resource.attributes[SERVICE_NAME] == "sessionmesh-gateway"
        provider.shutdown()

    @pytest.mark.parametrize(
        "variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    )
    def test_exports_over_otlp_when_an_endpoint_is_set(
        self, clean_otel_environment: pytest.MonkeyPatch, variable: str
    ) -> None:
        clean_otel_environment.setenv(variable, "http://127.0.0.1:4317")
        provider = build_tracer_provider("sessionmesh-gateway")
        assert provider is not None
        (processor,) = _processors(provider)
        assert isinstance(processor, BatchSpanProcessor)
        assert isinstance(processor._batch_processor._exporter, OTLPSpanExporter)
        provider.shutdown()

    def test_service_name_and_sampler_come_from_the_environment(
        self, clean_otel_environment: pytest.MonkeyPatch
    ) -> None:
        clean_otel_environment.setenv("OTEL_SERVICE_NAME", "edge-gateway")
        clean_otel_environment.setenv("OTEL_TRACES_SAMPLER", "always_off")
        provider = build_tracer_provider("sessionmesh-gateway")
        assert provider is not None
        assert provider.resource.attributes[SERVICE_NAME] == "edge-gateway"
        assert provider.sampler is ALWAYS_OFF
        provider.shutdown()

    def test_sdk_disabled_builds_nothing(self, clean_otel_environment: pytest.MonkeyPatch) -> None:
        clean_otel_environment.setenv("OTEL_SDK_DISABLED", "true")
        assert build_tracer_provider("sessionmesh-gateway") is None

    def test_configure_installs_the_provider_once(
        self, clean_otel_environment: pytest.MonkeyPatch
    ) -> None:
        saved = swap_global_provider(None)
        clean_otel_environment.setattr(telemetry.tracing, "_is_configured", False)
        try:
            configure_tracing("first")
            installed = trace.get_tracer_provider()
            configure_tracing("second")
            assert trace.get_tracer_provider() is installed
            assert isinstance(installed, TracerProvider)
            assert installed.resource.attributes[SERVICE_NAME] == "first"
            installed.shutdown()
        finally:
            restore_global_provider(saved)


class TestLogsAndMetrics:
    """Log lines carry the trace ids; the metrics endpoint can be turned off."""

    def test_log_line_carries_trace_and_span_ids(
        self, span_exporter: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root = logging.getLogger()
        saved_handlers, saved_level = list(root.handlers), root.level
        saved_structlog = structlog.get_config()
        try:
            configure_logging("sessionmesh-gateway", level="INFO")
            configure_logging("sessionmesh-gateway", level="INFO")
            with trace.get_tracer("test").start_as_current_span("work") as span:
                structlog.get_logger("gateway.test").info("routed", workspace_id='ws "1"')
                logging.getLogger("grpc.test").info("from a library")
            context = span.get_span_context()
            configure_logging("sessionmesh-gateway", level="INFO", log_format="json")
            structlog.get_logger("gateway.test").info("routed", workspace_id="ws-2")
        finally:
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            structlog.configure(**saved_structlog)
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 3
        assert lines[0].startswith("ts=")
        ids = f"trace_id={context.trace_id:032x} span_id={context.span_id:016x}"
        assert (
            " level=info service=sessionmesh-gateway logger=gateway.test event=routed"
            f' workspace_id="ws \\"1\\"" {ids}'
        ) in lines[0]
        assert f'logger=grpc.test event="from a library" {ids}' in lines[1]
        record = json.loads(lines[2])
        assert {key: record[key] for key in ("event", "level", "workspace_id", "service")} == {
            "event": "routed",
            "level": "info",
            "workspace_id": "ws-2",
            "service": "sessionmesh-gateway",
        }

    def test_empty_metrics_listen_is_off(self) -> None:
        assert start_metrics_server("") == ""
