"""Bearer tokens, end to end: a gateway and a node with ``--auth tokens`` (the default), the
first admin token from ``--admin-token-file``, workspace tokens made through TokenService.

For every SessionService RPC a token of workspace A is refused on workspace B through the
gateway, straight to the owner node and through the proxyless client; a token lacking a scope
is refused that scope's RPCs; a revoked token is refused everywhere within a second; admin
RPCs need the admin token; health and reflection stay open.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog.testing
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gateway
from client.proxyless import ProxylessClient
from protos import admin_pb2, admin_pb2_grpc, session_pb2_grpc, token_pb2, token_pb2_grpc
from protos import session_pb2 as pb
from registry.auth import (
    AUTH_OFF,
    bearer_metadata,
    new_admin_token_text,
    parse_token,
)
from simnet import SimNet
from testkit import RunningNode, eventually, running_node

WORKSPACE_A = "ws-a"
WORKSPACE_B = "ws-b"
ALL_SCOPES = ["sessions.read", "messages.send", "sessions.manage"]


def _requests(workspace_id: str) -> dict[str, Message]:
    """One request of every SessionService method, for ``workspace_id``."""
    w, s = workspace_id, "s-1"
    return {
        "CreateSession": pb.CreateSessionRequest(
            workspace_id=w, session_id=s, phone_number="+15550001"
        ),
        "GetSession": pb.GetSessionRequest(workspace_id=w, session_id=s),
        "ListSessions": pb.ListSessionsRequest(workspace_id=w),
        "DeleteSession": pb.DeleteSessionRequest(workspace_id=w, session_id=s),
        "GetQrCode": pb.GetQrCodeRequest(workspace_id=w, session_id=s),
        "RequestPairingCode": pb.RequestPairingCodeRequest(
            workspace_id=w, session_id=s, phone_number="+15550001"
        ),
        "SendMessage": pb.SendMessageRequest(
            workspace_id=w, session_id=s, client_message_id="m-1", to="+15550002", text="hello"
        ),
        "WatchSession": pb.WatchSessionRequest(workspace_id=w, session_id=s),
    }


def test_every_session_rpc_is_covered() -> None:
    service = pb.DESCRIPTOR.services_by_name["SessionService"]
    assert sorted(_requests("w")) == sorted(method.name for method in service.methods)


async def _call(stub: Any, method: str, request: Message, metadata: Any) -> grpc.StatusCode:
    """The status one call ends with (a stream is read until its end or first error)."""
    try:
        if method == "WatchSession":
            async with asyncio.timeout(5):
                async for _ in stub.WatchSession(request, metadata=metadata, timeout=5):
                    break  # the first event (a snapshot) means the call was allowed
        else:
            await getattr(stub, method)(request, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@dataclass
class SecuredMesh:
    node: RunningNode
    gateway: gateway.GatewayServer
    gateway_stub: session_pb2_grpc.SessionServiceStub
    admin_stub: admin_pb2_grpc.AdminServiceStub
    token_stub: token_pb2_grpc.TokenServiceStub
    health_stub: health_pb2_grpc.HealthStub
    admin_token: str
    etcd_url: str
    cluster: str

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.admin_token)

    async def token(self, workspace_id: str, scopes: list[str], **options: Any) -> str:
        answer = await self.token_stub.CreateToken(
            token_pb2.CreateTokenRequest(workspace_id=workspace_id, scopes=scopes, **options),
            metadata=self.admin,
        )
        return str(answer.token)


@pytest.fixture
async def secured(
    tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
) -> AsyncIterator[SecuredMesh]:
    admin_token = new_admin_token_text()
    token_file = tmp_path / "admin-token"
    token_file.write_text(admin_token + "\n")
    flags = ["--auth", "tokens", "--admin-token-file", str(token_file)]
    async with running_node(tmp_path, etcd_url, cluster_name, simnet, extra_flags=flags) as node:
        config = gateway.load_config(
            ["--listen", "127.0.0.1:0", "--etcd", etcd_url, "--cluster", cluster_name, *flags],
            environ={},
        )
        server = await gateway.start_gateway(config)
        try:
            await eventually(lambda: server.router.ring.ring.node_ids == ["node-1"])
            async with grpc.aio.insecure_channel(server.address) as channel:
                yield SecuredMesh(
                    node=node,
                    gateway=server,
                    gateway_stub=session_pb2_grpc.SessionServiceStub(channel),
                    admin_stub=admin_pb2_grpc.AdminServiceStub(channel),
                    token_stub=token_pb2_grpc.TokenServiceStub(channel),
                    health_stub=health_pb2_grpc.HealthStub(channel),
                    admin_token=admin_token,
                    etcd_url=etcd_url,
                    cluster=cluster_name,
                )
        finally:
            await server.stop(grace_seconds=0.5)


@pytest.fixture
async def proxyless_for_a(secured: SecuredMesh) -> AsyncIterator[Callable[[str], Any]]:
    clients: list[ProxylessClient] = []

    async def connect(token: str) -> ProxylessClient:
        client = await ProxylessClient.connect(
            etcd_endpoints=secured.etcd_url, cluster=secured.cluster, token=token
        )
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


class TestTenancy:
    async def test_a_token_of_one_workspace_is_denied_every_rpc_of_another(
        self, secured: SecuredMesh, proxyless_for_a: Callable[[str], Any]
    ) -> None:
        token_a = await secured.token(WORKSPACE_A, ALL_SCOPES)
        # Workspace B has a session, so a leak would show as OK rather than NOT_FOUND.
        await secured.gateway_stub.CreateSession(
            _requests(WORKSPACE_B)["CreateSession"], metadata=secured.admin, timeout=10
        )
        proxyless = await proxyless_for_a(token_a)
        routes = {
            "gateway": secured.gateway_stub,
            "node": secured.node.stub,
            "proxyless": proxyless,
        }
        seen: dict[tuple[str, str], grpc.StatusCode] = {}
        for route, stub in routes.items():
            for method, request in _requests(WORKSPACE_B).items():
                metadata = bearer_metadata(token_a) if route != "proxyless" else None
                seen[route, method] = await _call(stub, method, request, metadata)
        assert set(seen.values()) == {grpc.StatusCode.PERMISSION_DENIED}, seen
        # Nothing changed in B: its session is still there, as it was.
        session = await secured.gateway_stub.GetSession(
            _requests(WORKSPACE_B)["GetSession"], metadata=secured.admin, timeout=5
        )
        assert session.session_id == "s-1"

    async def test_a_token_serves_its_own_workspace_on_every_route(
        self, secured: SecuredMesh, proxyless_for_a: Callable[[str], Any]
    ) -> None:
        token_a = await secured.token(WORKSPACE_A, ALL_SCOPES)
        proxyless = await proxyless_for_a(token_a)
        requests = _requests(WORKSPACE_A)
        metadata = bearer_metadata(token_a)
        created = await secured.gateway_stub.CreateSession(
            requests["CreateSession"], metadata=metadata, timeout=10
        )
        assert created.session_id == "s-1"
        listed = await secured.node.stub.ListSessions(
            requests["ListSessions"], metadata=metadata, timeout=5
        )
        assert [each.session_id for each in listed.sessions] == ["s-1"]
        fetched = await proxyless.GetSession(requests["GetSession"], timeout=5)
        assert fetched.session_id == "s-1"
        assert await _call(proxyless, "WatchSession", requests["WatchSession"], None) == (
            grpc.StatusCode.OK
        )

    async def test_a_token_lacking_a_scope_is_denied_that_scopes_rpcs(
        self, secured: SecuredMesh
    ) -> None:
        reader = bearer_metadata(await secured.token(WORKSPACE_A, ["sessions.read"]))
        requests = _requests(WORKSPACE_A)
        seen = {
            method: await _call(secured.gateway_stub, method, request, reader)
            for method, request in requests.items()
        }
        denied = {"CreateSession", "DeleteSession", "RequestPairingCode", "SendMessage"}
        assert {m for m, code in seen.items() if code == grpc.StatusCode.PERMISSION_DENIED} == (
            denied
        ), seen
        # Reads pass the check: the session does not exist, and the node says so.
        assert seen["GetSession"] == grpc.StatusCode.NOT_FOUND
        assert seen["ListSessions"] == grpc.StatusCode.OK
        node_seen = await _call(secured.node.stub, "SendMessage", requests["SendMessage"], reader)
        assert node_seen == grpc.StatusCode.PERMISSION_DENIED

    async def test_no_token_or_an_unknown_one_is_unauthenticated(
        self, secured: SecuredMesh
    ) -> None:
        stranger = "smt_0123456789ab_" + "A" * 43
        for metadata in (None, bearer_metadata(stranger), (("authorization", "Basic eA=="),)):
            for stub in (secured.gateway_stub, secured.node.stub):
                for method, request in _requests(WORKSPACE_A).items():
                    code = await _call(stub, method, request, metadata)
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (metadata, method)

    async def test_bytes_that_do_not_parse_meet_the_check_first(self, secured: SecuredMesh) -> None:
        for address in (secured.gateway.address, secured.node.server.address):
            async with grpc.aio.insecure_channel(address) as channel:
                call = channel.unary_unary(
                    "/sessionmesh.v1.SessionService/GetSession",
                    request_serializer=lambda data: data,
                    response_deserializer=lambda data: data,
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(b"\xff\xff\xff", timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as invalid:
                    await call(b"\xff\xff\xff", timeout=5, metadata=secured.admin)
                assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_an_expired_token_is_refused(self, secured: SecuredMesh) -> None:
        token = await secured.token(WORKSPACE_A, ["sessions.read"], expires_in_seconds=0.5)
        request = _requests(WORKSPACE_A)["ListSessions"]
        assert await _call(
            secured.gateway_stub, "ListSessions", request, bearer_metadata(token)
        ) == (grpc.StatusCode.OK)

        async def refused() -> bool:
            metadata = bearer_metadata(token)
            code = await _call(secured.gateway_stub, "ListSessions", request, metadata)
            return code == grpc.StatusCode.UNAUTHENTICATED

        await eventually(refused, timeout_seconds=5, message="the token expired")


class TestRevocation:
    async def test_a_revoked_token_is_refused_everywhere_within_a_second(
        self, secured: SecuredMesh, proxyless_for_a: Callable[[str], Any]
    ) -> None:
        token = await secured.token(WORKSPACE_A, ALL_SCOPES)
        token_id, _ = parse_token(token)
        proxyless = await proxyless_for_a(token)
        request = _requests(WORKSPACE_A)["ListSessions"]
        metadata = bearer_metadata(token)
        routes = [
            (secured.gateway_stub, metadata),
            (secured.node.stub, metadata),
            (proxyless, None),
        ]
        for stub, each in routes:
            assert await _call(stub, "ListSessions", request, each) == grpc.StatusCode.OK
        await secured.token_stub.RevokeToken(
            token_pb2.RevokeTokenRequest(token_id=token_id), metadata=secured.admin
        )
        revoked_at = time.monotonic()
        pending = list(routes)
        while pending:
            pending = [
                (stub, each)
                for stub, each in pending
                if await _call(stub, "ListSessions", request, each)
                != grpc.StatusCode.UNAUTHENTICATED
            ]
            assert time.monotonic() - revoked_at < 1.0, "still accepted a second after revoking"
        listed = await secured.token_stub.ListTokens(
            token_pb2.ListTokensRequest(), metadata=secured.admin
        )
        assert token_id not in [each.token_id for each in listed.tokens]

    async def test_revoking_an_unknown_token_is_not_found(self, secured: SecuredMesh) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await secured.token_stub.RevokeToken(
                token_pb2.RevokeTokenRequest(token_id="0123456789ab"), metadata=secured.admin
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


class TestAdminRole:
    async def test_admin_rpcs_need_the_admin_token(self, secured: SecuredMesh) -> None:
        workspace = bearer_metadata(await secured.token(WORKSPACE_A, ALL_SCOPES))
        calls = {
            "ListNodes": lambda m: secured.admin_stub.ListNodes(
                admin_pb2.ListNodesRequest(), metadata=m, timeout=5
            ),
            "DrainNode": lambda m: secured.admin_stub.DrainNode(
                admin_pb2.DrainNodeRequest(node_id="node-x"), metadata=m, timeout=5
            ),
            "PlanRebalance": lambda m: secured.admin_stub.PlanRebalance(
                admin_pb2.PlanRebalanceRequest(dry_run=True), metadata=m, timeout=5
            ),
            "CreateToken": lambda m: secured.token_stub.CreateToken(
                token_pb2.CreateTokenRequest(admin=True), metadata=m, timeout=5
            ),
            "ListTokens": lambda m: secured.token_stub.ListTokens(
                token_pb2.ListTokensRequest(), metadata=m, timeout=5
            ),
        }
        for name, call in calls.items():
            for metadata, expected in (
                (None, grpc.StatusCode.UNAUTHENTICATED),
                (workspace, grpc.StatusCode.PERMISSION_DENIED),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await call(metadata)
                assert denied.value.code() == expected, name
        nodes = await secured.admin_stub.ListNodes(
            admin_pb2.ListNodesRequest(), metadata=secured.admin, timeout=5
        )
        assert [each.node_id for each in nodes.nodes] == ["node-1"]

    async def test_health_and_reflection_stay_open(self, secured: SecuredMesh) -> None:
        answer = await secured.health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(secured.node.server.address) as channel:
            node_health = health_pb2_grpc.HealthStub(channel)
            answer = await node_health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

    async def test_token_list_shows_ids_and_grants_never_secrets(
        self, secured: SecuredMesh
    ) -> None:
        token = await secured.token(WORKSPACE_A, ["messages.send"], name="backend")
        listed = await secured.token_stub.ListTokens(
            token_pb2.ListTokensRequest(workspace_id=WORKSPACE_A), metadata=secured.admin
        )
        (info,) = listed.tokens
        assert (info.token_id, list(info.scopes), info.name) == (
            parse_token(token)[0],
            ["messages.send"],
            "backend",
        )
        _, secret = parse_token(token)
        assert secret not in str(listed)

    async def test_bad_token_requests_are_invalid_and_store_nothing(
        self, secured: SecuredMesh
    ) -> None:
        before = await secured.token_stub.ListTokens(
            token_pb2.ListTokensRequest(), metadata=secured.admin
        )
        for request in (
            token_pb2.CreateTokenRequest(workspace_id=WORKSPACE_A, scopes=["sessions.everything"]),
            token_pb2.CreateTokenRequest(workspace_id=WORKSPACE_A),
            token_pb2.CreateTokenRequest(workspace_id="../etc", scopes=["sessions.read"]),
            token_pb2.CreateTokenRequest(admin=True, workspace_id=WORKSPACE_A),
            token_pb2.CreateTokenRequest(
                workspace_id=WORKSPACE_A, scopes=["sessions.read"], expires_in_seconds=-1
            ),
            token_pb2.CreateTokenRequest(
                workspace_id=WORKSPACE_A, scopes=["sessions.read"], name="a\nb"
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await secured.token_stub.CreateToken(request, metadata=secured.admin)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        after = await secured.token_stub.ListTokens(
            token_pb2.ListTokensRequest(), metadata=secured.admin
        )
        assert after == before


async def test_auth_off_warns_at_start_and_again(
    tmp_path: Path,
    etcd_url: str,
    cluster_name: str,
    simnet: SimNet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("registry.auth.policy.AUTH_OFF_WARNING_SECONDS", 0.05)
    with structlog.testing.capture_logs() as logs:
        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet, extra_flags=["--auth", AUTH_OFF]
        ) as node:
            await eventually(
                lambda: sum(each["event"] == "auth_off" for each in logs) >= 2,
                message="the warning repeats",
            )
            answer = await node.stub.ListSessions(
                pb.ListSessionsRequest(workspace_id=WORKSPACE_A), timeout=5
            )
            assert list(answer.sessions) == []
    assert all(each["log_level"] == "warning" for each in logs if each["event"] == "auth_off")


async def _meshctl(gateway_address: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client.meshctl",
        *args,
        env={**os.environ, "MESHCTL_GATEWAY": gateway_address, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    return process.returncode or 0, stdout.decode(), stderr.decode()


async def test_meshctl_creates_lists_and_revokes_tokens(
    secured: SecuredMesh, tmp_path: Path
) -> None:
    address = secured.gateway.address
    admin = ("--token", secured.admin_token)
    code, out, err = await _meshctl(
        address, *admin, "token", "create", "--workspace", WORKSPACE_A,
        "--scope", "sessions.read", "--scope", "messages.send", "--expires", "30d", "--json",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    token_id = created["info"]["token_id"]
    assert created["token"].startswith(f"smt_{token_id}_")
    assert created["info"]["scopes"] == ["sessions.read", "messages.send"]
    assert created["info"]["expires_at"] > time.time() + 29 * 86400
    answer = await secured.gateway_stub.ListSessions(
        pb.ListSessionsRequest(workspace_id=WORKSPACE_A),
        metadata=bearer_metadata(created["token"]),
        timeout=5,
    )
    assert list(answer.sessions) == []

    code, out, err = await _meshctl(address, *admin, "token", "list", "--json")
    assert code == 0, err
    assert token_id in [each["token_id"] for each in json.loads(out)["tokens"]]
    assert created["token"] not in out
    code, table, _ = await _meshctl(address, *admin, "token", "list")
    assert code == 0 and token_id in table and "sessions.read" in table

    code, out, err = await _meshctl(address, *admin, "token", "revoke", token_id, "--json")
    assert code == 0, err
    assert json.loads(out)["info"]["token_id"] == token_id

    code, _, err = await _meshctl(address, "token", "list")
    assert code == 1 and "UNAUTHENTICATED" in err and "--token" in err
    code, _, err = await _meshctl(address, *admin, "token", "create", "--expires", "soon")
    assert code == 2 and "not a duration" in err

    written = tmp_path / "new-admin-token"
    code, _, err = await _meshctl(address, "token", "new-admin", "--to", str(written))
    assert code == 0, err
    parse_token(written.read_text().strip())
    assert written.stat().st_mode & 0o777 == 0o600
