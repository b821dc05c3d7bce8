"""No secret in a log line, a span or an error message: a run with TLS and tokens on creates,
uses, misuses and revokes tokens, and every log record and span it produced — and every error
detail a caller received — is searched for every token, token secret and private key."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog.testing
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import gateway
from deploy.certs import IssuedFiles, issue
from protos import session_pb2 as pb
from protos import session_pb2_grpc, token_pb2, token_pb2_grpc
from registry.auth import (
    bearer_metadata,
    new_admin_token_text,
    parse_token,
)
from simnet import SimNet
from testkit import eventually, running_node
from tests.span_capture import captured_spans

WORKSPACE = "ws-secrets"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.args!r} {record.exc_text}")


@pytest.fixture
def captured() -> Iterator[tuple[_Records, InMemorySpanExporter]]:
    """Every stdlib log record (structlog's are captured in the test) and every span."""
    handler = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    with captured_spans() as exporter:
        yield handler, exporter
    root.removeHandler(handler)
    root.setLevel(level)


def _key_lines(certs: IssuedFiles) -> list[str]:
    """The base64 body lines of every private key ``make certs`` wrote."""
    lines: list[str] = []
    for path in certs.folder.glob("*-key.pem"):
        lines += [line for line in path.read_text().splitlines() if "-----" not in line]
    return lines


def _span_text(spans: InMemorySpanExporter) -> list[str]:
    texts: list[str] = []
    for span in spans.get_finished_spans():
        texts.append(f"{span.name} {dict(span.attributes or {})} {span.status.description}")
        texts += [f"{event.name} {dict(event.attributes or {})}" for event in span.events]
    return texts


async def _error_detail(call: Any) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name} {error.details()} {error.trailing_metadata()}"
    return "OK"


async def test_no_secret_reaches_a_log_a_span_or_an_error(
    tmp_path: Path,
    etcd_url: str,
    cluster_name: str,
    simnet: SimNet,
    captured: tuple[_Records, InMemorySpanExporter],
) -> None:
    records, spans = captured
    certs = issue(tmp_path / "certs")
    admin_token = new_admin_token_text()
    token_file = tmp_path / "admin-token"
    token_file.write_text(admin_token)
    auth = ["--auth", "tokens", "--admin-token-file", str(token_file)]
    ca = certs.certificate("ca").read_bytes()
    member = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=certs.key("client").read_bytes(),
        certificate_chain=certs.certificate("client").read_bytes(),
    )
    details: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet, extra_flags=[*auth, *certs.flags("node")]
        ) as node:
            config = gateway.load_config(
                [
                    "--listen", "127.0.0.1:0", "--etcd", etcd_url, "--cluster", cluster_name,
                    *auth, *certs.flags("gateway"),
                ],
                environ={},
            )  # fmt: skip
            server = await gateway.start_gateway(config)
            try:
                await eventually(lambda: server.router.ring.ring.node_ids == ["node-1"])
                public = grpc.ssl_channel_credentials(root_certificates=ca)
                async with (
                    grpc.aio.secure_channel(server.address, public) as channel,
                    grpc.aio.secure_channel(node.server.address, member) as direct,
                ):
                    tokens = token_pb2_grpc.TokenServiceStub(channel)
                    sessions = session_pb2_grpc.SessionServiceStub(channel)
                    on_node = session_pb2_grpc.SessionServiceStub(direct)
                    created = await tokens.CreateToken(
                        token_pb2.CreateTokenRequest(
                            workspace_id=WORKSPACE,
                            scopes=["sessions.read", "messages.send", "sessions.manage"],
                        ),
                        metadata=bearer_metadata(admin_token),
                        timeout=10,
                    )
                    token = created.token
                    mine = bearer_metadata(token)
                    key = {"workspace_id": WORKSPACE, "session_id": "s-1"}
                    await sessions.CreateSession(
                        pb.CreateSessionRequest(
                            workspace_id=WORKSPACE, session_id="s-1", phone_number="+14155550100"
                        ),
                        metadata=mine,
                        timeout=10,
                    )
                    await on_node.GetSession(pb.GetSessionRequest(**key), metadata=mine, timeout=5)
                    await sessions.ListSessions(
                        pb.ListSessionsRequest(workspace_id=WORKSPACE), metadata=mine, timeout=5
                    )
                    token_id, secret = parse_token(token)
                    forged = f"smt_{token_id}_{secret[::-1]}"
                    for bearer in (forged, "hunter2-not-a-token", admin_token + "x"):
                        for stub in (sessions, on_node):
                            details.append(
                                await _error_detail(
                                    stub.GetSession(
                                        pb.GetSessionRequest(**key),
                                        metadata=bearer_metadata(bearer),
                                        timeout=5,
                                    )
                                )
                            )
                    details.append(
                        await _error_detail(
                            sessions.GetSession(
                                pb.GetSessionRequest(workspace_id="ws-other", session_id="s"),
                                metadata=mine,
                                timeout=5,
                            )
                        )
                    )
                    await tokens.RevokeToken(
                        token_pb2.RevokeTokenRequest(token_id=token_id),
                        metadata=bearer_metadata(admin_token),
                        timeout=5,
                    )

                    async def refused() -> bool:
                        detail = await _error_detail(
                            sessions.GetSession(pb.GetSessionRequest(**key), metadata=mine)
                        )
                        details.append(detail)
                        return detail.startswith("UNAUTHENTICATED")

                    await eventually(refused, message="the revoked token is refused")
            finally:
                await server.stop(grace_seconds=0.5)
    assert all(not each.startswith("OK") for each in details), details
    secrets = {
        "admin token": admin_token,
        "admin secret": parse_token(admin_token)[1],
        "token": token,
        "token secret": secret,
        "forged secret": secret[::-1],
        "bad bearer": "hunter2-not-a-token",
    }
    secrets.update({f"key line {i}": line for i, line in enumerate(_key_lines(certs))})
    haystacks = {
        "structlog": [repr(each) for each in logs],
        "logging": records.lines,
        "spans": _span_text(spans),
        "errors": details,
    }
    assert len(logs) > 10 and spans.get_finished_spans(), "the run was captured"
    assert any(token_id in each for each in haystacks["structlog"]), "ids are logged"
    leaks = [
        (where, name)
        for where, texts in haystacks.items()
        for name, value in secrets.items()
        if any(value in text for text in texts)
    ]
    assert not leaks, leaks
