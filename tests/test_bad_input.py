"""Hostile or malformed input gets INVALID_ARGUMENT naming what was wrong, and changes
nothing: at the gateway (it cannot route what it cannot read) and at the node (ids, sizes,
tokens), before anything reaches storage."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from protos import SESSION_SERVICE_NAME
from protos import session_pb2 as pb
from testkit import RunningNode
from tests.calls import error_of
from tests.fakes import RunningEchoNode
from tests.probes import files_under, stub_of

BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("GetSession", pb.GetSessionRequest(workspace_id="../etc", session_id="s-1"), "workspace_id"),
    ("GetSession", pb.GetSessionRequest(workspace_id="ws-1", session_id="a/b"), "session_id"),
    ("GetSession", pb.GetSessionRequest(workspace_id="", session_id="s-1"), "workspace_id"),
    ("CreateSession", pb.CreateSessionRequest(workspace_id="ws-1", session_id=".."), "session_id"),
    (
        "CreateSession",
        pb.CreateSessionRequest(workspace_id="x" * 65, session_id="s"),
        "workspace_id",
    ),
    ("CreateSession", pb.CreateSessionRequest(workspace_id="wš", session_id="s-1"), "workspace_id"),
    (
        "CreateSession",
        pb.CreateSessionRequest(workspace_id="ws-1", session_id="s-1", phone_number="call me"),
        "phone_number",
    ),
    (
        "CreateSession",
        pb.CreateSessionRequest(workspace_id="ws-1", session_id="s-1", labels={"k": "v" * 300}),
        "label",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            workspace_id="ws-1", session_id="s-1", client_message_id="m-1", to="+1", text="x" * 4097
        ),
        "text",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            workspace_id="ws-1", session_id="s-1", client_message_id="m-1", to="", text="hi"
        ),
        "to",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            workspace_id="ws-1", session_id="s-1", client_message_id="../m", to="+1", text="hi"
        ),
        "client_message_id",
    ),
    ("ListSessions", pb.ListSessionsRequest(workspace_id="ws-1", page_token="!!not"), "page_token"),
    ("ListSessions", pb.ListSessionsRequest(workspace_id="ws-1", page_size=-1), "page_size"),
    (
        "DeleteSession",
        pb.DeleteSessionRequest(workspace_id="ws-1", session_id="s-1", reason="r" * 65),
        "reason",
    ),
    (
        "DeleteSession",
        pb.DeleteSessionRequest(workspace_id="ws-1", session_id="s-1", details="a\x00b"),
        "details",
    ),
    (
        "DeleteSession",
        pb.DeleteSessionRequest(workspace_id="ws-1", session_id="s-1", details="d" * 4097),
        "details",
    ),
    ("GetQrCode", pb.GetQrCodeRequest(workspace_id="ws 1", session_id="s-1"), "workspace_id"),
]
"""(method, request, what the error message must name): each one invalid in one way."""


class TestTheGatewayRefusesWhatItCannotRoute:
    """Requests the gateway cannot route are refused with INVALID_ARGUMENT, reaching no node."""

    @pytest.mark.parametrize(
        "payload",
        [
            b"\xff\xff\xff",
            b"\x0a\x05ab",
            pb.GetSessionRequest(session_id="s1").SerializeToString(),
            pb.GetSessionRequest(workspace_id="../etc", session_id="s1").SerializeToString(),
        ],
        ids=["garbage", "truncated", "missing-workspace", "bad-workspace"],
    )
    async def test_an_unroutable_request_is_invalid_argument(
        self, two_nodes: dict[str, RunningEchoNode], channel: grpc.aio.Channel, payload: bytes
    ) -> None:
        raw_call = channel.unary_unary(
            f"/{SESSION_SERVICE_NAME}/GetSession",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await raw_call(payload, timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "workspace_id" in (raised.value.details() or "") or "request" in (
            raised.value.details() or ""
        )
        assert all(not node.servicer.calls for node in two_nodes.values())

    async def test_an_unroutable_stream_is_invalid_argument(
        self, two_nodes: dict[str, RunningEchoNode], channel: grpc.aio.Channel
    ) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub_of(channel).WatchSession(
                pb.WatchSessionRequest(workspace_id="a b", session_id="s1"), timeout=5
            ):
                pass
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "workspace_id 'a b' is invalid" in (raised.value.details() or "")
        assert all(not node.servicer.calls for node in two_nodes.values())


class TestTheNodeValidatesEveryField:
    """Bad input is INVALID_ARGUMENT naming the problem, writing nothing."""

    async def test_each_bad_input_is_invalid_argument_naming_the_field(
        self, node: RunningNode
    ) -> None:
        for method, request, named in BAD_REQUESTS:
            error = await error_of(getattr(node.stub, method)(request, timeout=5))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request)
            assert named in (error.details() or ""), (method, error.details())
        stream = node.stub.WatchSession(pb.WatchSessionRequest(workspace_id="ws-1", session_id="/"))
        error = await error_of(stream.read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert files_under(node.storage) == []


def _with_bad_utf8(message: Any, placeholder: str) -> bytes:
    """``message`` serialized, its ``placeholder`` text replaced by bytes that are not UTF-8."""
    return message.SerializeToString().replace(placeholder.encode(), b"\xff\xfe")


class TestTheNodeRefusesRequestsThatDoNotParse:
    """A request that does not parse (a string that is not UTF-8) is INVALID_ARGUMENT too,
    before any handler runs: nothing is stored."""

    async def test_a_unary_call_is_invalid_argument(self, node: RunningNode) -> None:
        payload = _with_bad_utf8(
            pb.DeleteSessionRequest(workspace_id="ws-1", session_id="s-1", details="XX"), "XX"
        )
        raw_call = node.channel.unary_unary(
            f"/{SESSION_SERVICE_NAME}/DeleteSession",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        error = await error_of(raw_call(payload, timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request does not parse" in (error.details() or "")
        assert files_under(node.storage) == []

    async def test_a_stream_is_invalid_argument(self, node: RunningNode) -> None:
        payload = _with_bad_utf8(pb.WatchSessionRequest(workspace_id="ws-1", session_id="XX"), "XX")
        raw_stream = node.channel.unary_stream(
            f"/{SESSION_SERVICE_NAME}/WatchSession",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        error = await error_of(raw_stream(payload, timeout=5).read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request does not parse" in (error.details() or "")
