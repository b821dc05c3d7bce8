"""Hostile input, property-based: random and malformed requests for every SessionService RPC
— protobuf messages with hostile field values (``../``, NUL bytes, control characters,
strings past the size limit and one of 10 MB, huge page sizes, random labels) and raw bytes
that are not valid protobuf — sent through the gateway and straight to a node, both real
processes with tokens on (the admin token, so every request reaches the handlers).

Every answer is a proper status (never UNKNOWN, INTERNAL or a dropped connection), no process
exits, nothing is written outside the storage tree, and the session stored before the run is
unchanged, in its files and its DB row. The figure — requests tried, statuses seen — is
printed. A bounded run in ``make test``; ``SESSIONMESH_FULL=1`` tries ten times as many.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos import SESSION_SERVICE_NAME, session_pb2_grpc
from protos import session_pb2 as pb
from registry.auth import (
    bearer_metadata,
    new_admin_token_text,
)
from testkit import MeshSettings, ProcessMesh, eventually, is_full_size, running_process_mesh

KEPT = ("ws-kept", "s-kept")
"""The session stored before the run: hostile requests must leave it as it was."""
EXAMPLES = 1500 if is_full_size() else 150
SERVICE = pb.DESCRIPTOR.services_by_name["SessionService"]
METHODS = {method.name: method for method in SERVICE.methods}
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,  # e.g. the QR code of a session that is READY
    grpc.StatusCode.OUT_OF_RANGE,  # a watch resumed after events that are not kept
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a WatchSession stream that was allowed stays open
}
TEN_MEGABYTES = "x" * 10_000_000

_HOSTILE_TEXT = st.one_of(
    st.sampled_from(
        [
            "", "../", "..", "../../etc/passwd", "/etc/passwd", "a/../../b", "./.", "~root",
            "\x00", "ws\x00x", "\r\n", "\t", "%2e%2e%2f", "CON", "\u202e", "\ufeff", "😀" * 20,
            "a" * 65, "b" * 4097, "c" * 70_000, "\x7f", "*", "ws-kept", "s-kept",
            "ws-h1", "s-h1", "+14155550100",
        ]
    ),
    st.text(max_size=80),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20),
)  # fmt: skip
_PAGE_SIZES = st.one_of(st.sampled_from([-(2**31), -1, 0, 1, 2**31 - 1]), st.integers(-5, 5000))


def _message(name: str, draw: st.DrawFn) -> Message:
    text: Callable[[], str] = lambda: draw(_HOSTILE_TEXT)  # noqa: E731
    key = {"workspace_id": text(), "session_id": text()}
    if key == {"workspace_id": KEPT[0], "session_id": KEPT[1]}:
        key["session_id"] = "other"  # hostile, not destructive by luck
    if name == "CreateSession":
        return pb.CreateSessionRequest(
            **key,
            phone_number=text(),
            labels=draw(st.dictionaries(_HOSTILE_TEXT, _HOSTILE_TEXT, max_size=5)),
        )
    if name == "ListSessions":
        return pb.ListSessionsRequest(
            workspace_id=key["workspace_id"], page_size=draw(_PAGE_SIZES), page_token=text()
        )
    if name == "DeleteSession":
        return pb.DeleteSessionRequest(**key, reason=text(), details=text())
    if name == "SendMessage":
        return pb.SendMessageRequest(**key, client_message_id=text(), to=text(), text=text())
    if name == "RequestPairingCode":
        return pb.RequestPairingCodeRequest(**key, phone_number=text())
    return GET_TYPES[name](**key)


GET_TYPES: dict[str, Any] = {
    "GetSession": pb.GetSessionRequest,
    "GetQrCode": pb.GetQrCodeRequest,
    "WatchSession": pb.WatchSessionRequest,
}


@st.composite
def _hostile_calls(draw: st.DrawFn) -> tuple[str, bytes]:
    """(method, request bytes): a hostile message, or bytes that may not parse at all."""
    name = draw(st.sampled_from(sorted(METHODS)))
    kind = draw(st.sampled_from(["message", "message", "raw", "mangled"]))
    if kind == "raw":
        return name, draw(st.binary(max_size=300))
    data = _message(name, draw).SerializeToString()
    if kind == "mangled" and data:
        index = draw(st.integers(0, len(data) - 1))
        data = data[:index] + bytes([draw(st.integers(0, 255))]) + data[index + 1 :]
        data = data[: draw(st.integers(0, len(data)))]
    return name, data


def _collect() -> list[tuple[str, bytes]]:
    calls: list[tuple[str, bytes]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # The same requests on every run of make test; new ones on every full run.
        derandomize=not is_full_size(),
        suppress_health_check=list(HealthCheck),
    )
    @given(_hostile_calls())
    def gather(call: tuple[str, bytes]) -> None:
        calls.append(call)

    gather()
    # The 10 MB strings, once per method and route: refused by the size limit.
    for name in METHODS:
        calls.append((name, _ten_megabytes(name)))
    # Valid ids with hostile values elsewhere, so every run reaches the handlers too.
    kept = {"workspace_id": KEPT[0], "session_id": KEPT[1]}
    other = {"workspace_id": "ws-h1", "session_id": "s-h1"}
    for name, request in (
        ("ListSessions", pb.ListSessionsRequest(workspace_id=KEPT[0], page_size=2**31 - 1)),
        ("ListSessions", pb.ListSessionsRequest(workspace_id=KEPT[0], page_size=-(2**31))),
        ("ListSessions", pb.ListSessionsRequest(workspace_id=KEPT[0], page_token="../\x00")),
        ("GetSession", pb.GetSessionRequest(**other)),
        ("GetQrCode", pb.GetQrCodeRequest(**kept)),
        # The kept session is READY: refused (FAILED_PRECONDITION), never paired again.
        ("RequestPairingCode", pb.RequestPairingCodeRequest(**kept, phone_number="+14155550100")),
        ("RequestPairingCode", pb.RequestPairingCodeRequest(**kept, phone_number="+1\x00")),
        (
            "WatchSession",
            pb.WatchSessionRequest(
                workspace_id=KEPT[0], session_id=KEPT[1], after_sequence=2**64 - 1
            ),
        ),
        ("WatchSession", pb.WatchSessionRequest(workspace_id=KEPT[0], session_id=KEPT[1])),
        (
            "CreateSession",
            pb.CreateSessionRequest(
                workspace_id="ws-h1",
                session_id="s-h1",
                phone_number="+14155550100",
                labels={"\x00": "../"},
            ),
        ),
        (
            "CreateSession",
            pb.CreateSessionRequest(
                workspace_id=KEPT[0], session_id=KEPT[1], phone_number="+19995550100"
            ),
        ),
        (
            "SendMessage",
            pb.SendMessageRequest(
                workspace_id="ws-h1", session_id="s-none", client_message_id="m-1",
                to="+14155550101", text="\x00" * 10,
            ),
        ),
        ("DeleteSession", pb.DeleteSessionRequest(**other, reason="\x00", details="\r\n")),
    ):  # fmt: skip
        calls.append((name, request.SerializeToString()))
    return calls


def _ten_megabytes(name: str) -> bytes:
    request_type = type(_message(name, lambda strategy: "")) if False else None
    del request_type
    return pb.GetSessionRequest(workspace_id=TEN_MEGABYTES, session_id="s").SerializeToString()


def _tree(root: Path, *, skip: Path | None = None) -> dict[str, str]:
    """Every file under ``root`` (not under ``skip``) with its SHA-256."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and path.is_relative_to(skip):
            continue
        if path.is_file() and not path.name.endswith(".log"):
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _row_is_ready(database_url: str) -> bool:
    try:
        return bool(_row(database_url)[1] == "ready")
    except sa.exc.NoResultFound:
        return False


def _row(database_url: str) -> tuple[Any, ...]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return tuple(
                connection.execute(
                    # What a request could change; not the times the node refreshes by itself.
                    sa.text(
                        "SELECT phone_number, status, assigned_node_id, disconnected_at, "
                        "disconnect_reason, disconnect_details, session_storage_path, "
                        "instance_migration_count, created_at FROM whatsapp_accounts "
                        "WHERE workspace_id = :w AND session_id = :s"
                    ),
                    {"w": KEPT[0], "s": KEPT[1]},
                ).one()
            )
    finally:
        engine.dispose()


async def _answer(
    channel: grpc.aio.Channel, name: str, data: bytes, metadata: Any
) -> grpc.StatusCode:
    path = f"/{SESSION_SERVICE_NAME}/{name}"
    identity: Callable[[bytes], bytes] = lambda raw: raw  # noqa: E731
    try:
        if METHODS[name].server_streaming:
            stream = channel.unary_stream(
                path, request_serializer=identity, response_deserializer=identity
            )
            call = stream(data, metadata=metadata, timeout=1)
            async for _ in call:
                break
            call.cancel()
        else:
            unary = channel.unary_unary(
                path, request_serializer=identity, response_deserializer=identity
            )
            await unary(data, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def mesh(tmp_path: Path) -> Any:
    state = tmp_path / "mesh"
    state.mkdir()
    token_file = state / "admin-token"
    token_file.write_text(new_admin_token_text())
    settings_ = MeshSettings(
        node_count=1, auth_flags=("--admin-token-file", str(token_file)), lease_ttl_seconds=None
    )
    async with running_process_mesh(state, settings_) as running:
        yield running, token_file.read_text().strip()


async def test_hostile_requests_get_a_status_and_change_nothing(
    mesh: tuple[ProcessMesh, str], tmp_path: Path
) -> None:
    running, admin_token = mesh
    admin = bearer_metadata(admin_token)
    storage = running.state_dir / "sessions"
    async with grpc.aio.insecure_channel(running.gateway_address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        await stub.CreateSession(
            pb.CreateSessionRequest(
                workspace_id=KEPT[0], session_id=KEPT[1], phone_number="+14155550100"
            ),
            metadata=admin,
            timeout=10,
        )

        async def ready() -> bool:
            got = await stub.GetSession(
                pb.GetSessionRequest(workspace_id=KEPT[0], session_id=KEPT[1]),
                metadata=admin,
                timeout=5,
            )
            return bool(got.state == pb.SESSION_STATE_READY)

        await eventually(ready, timeout_seconds=30, message="the kept session is READY")
        # The row is written beside the call path: wait until it says READY too, or the
        # writer's catching up would look like a change made by a hostile request.
        await eventually(
            lambda: _row_is_ready(running.database_url), message="its DB row says READY"
        )
        kept_dir = next(path for path in storage.rglob(KEPT[1]) if path.is_dir())
        kept_files, kept_row = _tree(kept_dir), _row(running.database_url)
        outside = _tree(tmp_path, skip=storage)

        calls = _collect()
        seen: collections.Counter[str] = collections.Counter()
        bad: list[tuple[str, str, grpc.StatusCode, bytes]] = []
        (node_address,) = running.node_addresses.values()
        async with grpc.aio.insecure_channel(node_address) as node_channel:
            for index, (name, data) in enumerate(calls):
                # One in ten without a token: the check comes first, whatever the bytes.
                metadata = None if index % 10 == 9 else admin
                for route, route_channel in (("gateway", channel), ("node", node_channel)):
                    code = await _answer(route_channel, name, data, metadata)
                    seen[code.name] += 1
                    # Without a token: refused as such — or for its size first, which gRPC
                    # checks before any handler (and so any token check) sees the request.
                    expected_refusal = (
                        code
                        in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)
                        if metadata is None
                        else code != grpc.StatusCode.UNAUTHENTICATED
                    )
                    if code not in ALLOWED or not expected_refusal:
                        bad.append((route, name, code, data[:200]))
        print(
            f"\nhostile input: {len(calls)} requests x 2 routes = {sum(seen.values())} calls; "
            f"statuses: {dict(sorted(seen.items()))}"
        )
        assert not bad, bad[:10]
        assert running.running_processes == ["gateway", "node-1", "simnet"], running.all_log_tails(
            lines=20
        )
        assert await ready(), "the kept session is still READY"
    assert _tree(kept_dir) == kept_files, "the kept session's files changed"
    assert _row(running.database_url) == kept_row, "the kept session's row changed"

    # Nothing new or changed outside the storage tree: the accounts DB (rows of sessions the
    # hostile requests legitimately created) and etcd's own data (leases, owners) aside.
    def _others(tree: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in tree.items() if "accounts.db" not in k and "etcd-data" not in k}

    assert _others(_tree(tmp_path, skip=storage)) == _others(outside)
    for path in storage.rglob("*"):
        assert path.resolve().is_relative_to(storage.resolve()), path
