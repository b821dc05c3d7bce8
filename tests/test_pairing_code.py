"""Pairing by phone number: ``RequestPairingCode`` gives a session waiting to be paired a code to
type on the phone, and the session pairs without any QR code scanned.

Through a real gateway and a real node (tokens on) on a real simnet whose phone never scans a
QR code (a negative pair delay): the code pairs the session, simnet's record says it was paired
by code, and a restarted node restores it from the stored credentials without a QR. Bad input,
an unknown session and a paired one are refused and change nothing; a token without
``sessions.manage`` is refused. Simnet's ``pair_code`` op on its own, and the node's
``--driver`` option: ``whatsmeow`` without its extra stops the node at start, naming the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

import gateway
import node
from client.proxyless import ProxylessClient
from protos import session_pb2 as pb
from protos import session_pb2_grpc, token_pb2, token_pb2_grpc
from registry.auth import bearer_metadata, new_admin_token_text
from simnet import SimNet
from simnet import protocol as p
from testkit import RunningNode, eventually, routed_nodes, running_node, running_simnet
from tests.calls import error_of
from tests.probes import trailing_dict

PHONE = "+14155550100"
CODE_PATTERN = re.compile(r"[1-9A-HJ-NP-TV-Z]{4}-[1-9A-HJ-NP-TV-Z]{4}")
"""WhatsApp's shape: eight characters of whatsmeow's alphabet, in two groups."""
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PairingMesh:
    """A gateway and one node with tokens on, over a simnet whose phone never scans a QR."""

    tmp_path: Path
    etcd_url: str
    cluster: str
    simnet: SimNet
    flags: list[str]
    gateway: gateway.GatewayServer
    stub: session_pb2_grpc.SessionServiceStub
    """On the gateway."""
    token_stub: token_pb2_grpc.TokenServiceStub
    admin_token: str
    node: RunningNode | None = None
    _node_stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.admin_token)

    async def start_node(self) -> RunningNode:
        """Start node-1 (again: same id, same storage) and wait until the gateway routes to it."""
        started = await self._node_stack.enter_async_context(
            running_node(
                self.tmp_path, self.etcd_url, self.cluster, self.simnet, extra_flags=self.flags
            )
        )
        self.node = started
        expected = {"node-1": started.server.address}
        await eventually(
            lambda: routed_nodes(self.gateway.router.ring) == expected,
            timeout_seconds=15,
            message="the gateway routes to node-1",
        )
        return started

    async def stop_node(self) -> None:
        """Stop node-1 gracefully."""
        await self._node_stack.aclose()
        self._node_stack = contextlib.AsyncExitStack()
        self.node = None

    async def token(self, workspace_id: str, scopes: list[str]) -> str:
        answer = await self.token_stub.CreateToken(
            token_pb2.CreateTokenRequest(workspace_id=workspace_id, scopes=scopes),
            metadata=self.admin,
        )
        return str(answer.token)

    async def state_of(self, ws: str, sid: str) -> int:
        got = await self.stub.GetSession(
            pb.GetSessionRequest(workspace_id=ws, session_id=sid), metadata=self.admin, timeout=5
        )
        return int(got.state)

    async def create_pending(self, ws: str, sid: str, *, phone_number: str = PHONE) -> None:
        """Create a session and wait until it shows a QR code (nobody will scan it)."""
        await self.stub.CreateSession(
            pb.CreateSessionRequest(workspace_id=ws, session_id=sid, phone_number=phone_number),
            metadata=self.admin,
            timeout=10,
        )

        async def pending() -> bool:
            return await self.state_of(ws, sid) == pb.SESSION_STATE_QR_PENDING

        await eventually(pending, message=f"{ws}/{sid} QR_PENDING")

    async def wait_state(self, ws: str, sid: str, state: int) -> None:
        async def reached() -> bool:
            return await self.state_of(ws, sid) == state

        await eventually(reached, timeout_seconds=15, message=f"{ws}/{sid} in state {state}")


@pytest.fixture
async def mesh(tmp_path: Path, etcd_url: str, cluster_name: str) -> AsyncIterator[PairingMesh]:
    admin_token = new_admin_token_text()
    token_file = tmp_path / "admin-token"
    token_file.write_text(admin_token + "\n")
    flags = ["--auth", "tokens", "--admin-token-file", str(token_file)]
    async with running_simnet(pair_delay_ms=-1) as simnet:
        config = gateway.load_config(
            ["--listen", "127.0.0.1:0", "--etcd", etcd_url, "--cluster", cluster_name, *flags],
            environ={},
        )
        server = await gateway.start_gateway(config)
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                built = PairingMesh(
                    tmp_path=tmp_path,
                    etcd_url=etcd_url,
                    cluster=cluster_name,
                    simnet=simnet,
                    flags=flags,
                    gateway=server,
                    stub=session_pb2_grpc.SessionServiceStub(channel),
                    token_stub=token_pb2_grpc.TokenServiceStub(channel),
                    admin_token=admin_token,
                )
                try:
                    await built.start_node()
                    yield built
                finally:
                    await built.stop_node()
        finally:
            await server.stop(grace_seconds=0.5)


def _request(ws: str, sid: str, phone_number: str = PHONE) -> pb.RequestPairingCodeRequest:
    return pb.RequestPairingCodeRequest(workspace_id=ws, session_id=sid, phone_number=phone_number)


class TestPairingByCode:
    """A code pairs a session that waits to be paired, with no QR code scanned."""

    async def test_the_code_pairs_the_session_and_a_restart_needs_no_qr(
        self, mesh: PairingMesh
    ) -> None:
        await mesh.create_pending("ws-1", "s-1")
        # Nobody scans QR codes on this simnet: pending it stays, until a code is asked for.
        await eventually(lambda: mesh.simnet.qr_issued("ws-1/s-1") >= 1, message="a QR shown")
        assert await mesh.state_of("ws-1", "s-1") == pb.SESSION_STATE_QR_PENDING
        assert mesh.simnet.pairings == []

        asked_at = time.time()
        answer = await mesh.stub.RequestPairingCode(
            _request("ws-1", "s-1"), metadata=mesh.admin, timeout=10
        )
        assert (answer.workspace_id, answer.session_id) == ("ws-1", "s-1")
        assert CODE_PATTERN.fullmatch(answer.code), answer.code
        assert answer.expire_time.ToSeconds() > asked_at

        await mesh.wait_state("ws-1", "s-1", pb.SESSION_STATE_READY)
        (pairing,) = mesh.simnet.pairings
        assert (pairing.account, pairing.method, pairing.phone_number) == (
            "ws-1/s-1",
            "code",
            PHONE,
        )
        assert mesh.simnet.pairing_codes_issued("ws-1/s-1") == 1
        assert mesh.simnet.live_accounts() == {"ws-1/s-1"}
        assert [path.name for path in mesh.tmp_path.rglob("credentials.json")] == [
            "credentials.json"
        ]

        # The credentials are stored: a restarted node restores the session with no QR shown.
        qr_before = mesh.simnet.qr_issued("ws-1/s-1")
        await mesh.stop_node()
        await mesh.start_node()
        await mesh.wait_state("ws-1", "s-1", pb.SESSION_STATE_READY)
        assert mesh.simnet.qr_issued("ws-1/s-1") == qr_before
        assert len(mesh.simnet.pairings) == 1
        assert mesh.simnet.max_concurrent_live["ws-1/s-1"] == 1

    async def test_the_proxyless_client_asks_for_a_code_too(self, mesh: PairingMesh) -> None:
        await mesh.create_pending("ws-2", "s-1")
        async with await ProxylessClient.connect(
            etcd_endpoints=mesh.etcd_url, cluster=mesh.cluster, token=mesh.admin_token
        ) as client:
            answer = await client.RequestPairingCode(_request("ws-2", "s-1"), timeout=10)
        assert CODE_PATTERN.fullmatch(answer.code), answer.code
        await mesh.wait_state("ws-2", "s-1", pb.SESSION_STATE_READY)
        assert [pairing.method for pairing in mesh.simnet.pairings] == ["code"]


class TestRefusals:
    """What cannot be paired by code is refused, at once, and changes nothing."""

    async def test_bad_input_and_unknown_sessions_are_refused(self, mesh: PairingMesh) -> None:
        await mesh.create_pending("ws-1", "s-1")
        refused = {
            "no phone": (_request("ws-1", "s-1", ""), grpc.StatusCode.INVALID_ARGUMENT),
            "bad phone": (_request("ws-1", "s-1", "call me"), grpc.StatusCode.INVALID_ARGUMENT),
            "another phone": (
                _request("ws-1", "s-1", "+14155550199"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            "bad id": (_request("ws-1", "../s-1"), grpc.StatusCode.INVALID_ARGUMENT),
            "unknown session": (_request("ws-1", "s-none"), grpc.StatusCode.NOT_FOUND),
        }
        for case, (request, expected) in refused.items():
            error = await error_of(
                mesh.stub.RequestPairingCode(request, metadata=mesh.admin, timeout=10)
            )
            assert error.code() == expected, (case, error.details())
        no_phone = await error_of(
            mesh.stub.RequestPairingCode(_request("ws-1", "s-1", ""), metadata=mesh.admin)
        )
        assert "phone_number" in (no_phone.details() or "")
        # Nothing changed: no code given out, nobody paired, the session still waits.
        assert mesh.simnet.pairing_codes_issued("ws-1/s-1") == 0
        assert mesh.simnet.pairings == []
        assert await mesh.state_of("ws-1", "s-1") == pb.SESSION_STATE_QR_PENDING

    async def test_a_paired_session_is_failed_precondition_naming_its_state(
        self, mesh: PairingMesh
    ) -> None:
        await mesh.create_pending("ws-1", "s-1")
        assert mesh.simnet.pair("ws-1/s-1")  # the phone scans the QR code
        await mesh.wait_state("ws-1", "s-1", pb.SESSION_STATE_READY)
        started = time.monotonic()
        error = await error_of(
            mesh.stub.RequestPairingCode(_request("ws-1", "s-1"), metadata=mesh.admin, timeout=10)
        )
        # An answer, not a redirect: the gateway does not retry it until the deadline.
        assert time.monotonic() - started < 2
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ready" in (error.details() or "")
        assert trailing_dict(error)["sessionmesh-session-state"] == "ready"
        assert mesh.simnet.pairing_codes_issued("ws-1/s-1") == 0
        assert [pairing.method for pairing in mesh.simnet.pairings] == ["qr"]
        assert await mesh.state_of("ws-1", "s-1") == pb.SESSION_STATE_READY

    async def test_a_token_without_sessions_manage_is_permission_denied(
        self, mesh: PairingMesh
    ) -> None:
        await mesh.create_pending("ws-1", "s-1")
        reader = bearer_metadata(await mesh.token("ws-1", ["sessions.read", "messages.send"]))
        assert mesh.node is not None
        for stub in (mesh.stub, mesh.node.stub):
            error = await error_of(
                stub.RequestPairingCode(_request("ws-1", "s-1"), metadata=reader, timeout=10)
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert mesh.simnet.pairing_codes_issued("ws-1/s-1") == 0
        assert await mesh.state_of("ws-1", "s-1") == pb.SESSION_STATE_QR_PENDING

        manager = bearer_metadata(await mesh.token("ws-1", ["sessions.manage"]))
        answer = await mesh.stub.RequestPairingCode(
            _request("ws-1", "s-1"), metadata=manager, timeout=10
        )
        assert CODE_PATTERN.fullmatch(answer.code)


class TestSimnetPairCode:
    """simnet's ``pair_code`` op: a code while pairing, a refusal otherwise."""

    async def test_a_code_pairs_a_pending_connection_and_nothing_else(self) -> None:
        async with running_simnet(pair_delay_ms=-1) as simnet:
            host, port = simnet.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(p.encode_line({"op": p.OP_PAIR_CODE, "phone": PHONE}))
                assert await _next(reader, p.EV_ERROR) == {
                    "ev": "error",
                    "op": p.OP_PAIR_CODE,
                    "reason": p.REASON_NOT_PAIRING,  # not bound to an account yet
                }
                writer.write(p.encode_line({"op": p.OP_CONNECT, "account": "a/b"}))
                await _next(reader, p.EV_QR)
                writer.write(p.encode_line({"op": p.OP_PAIR_CODE}))
                refused = await _next(reader, p.EV_ERROR)
                assert refused["reason"] == p.REASON_BAD_REQUEST
                writer.write(p.encode_line({"op": p.OP_PAIR_CODE, "phone": PHONE}))
                code = await _next(reader, p.EV_PAIRING_CODE)
                assert CODE_PATTERN.fullmatch(code["code"])
                assert (await _next(reader, p.EV_PAIRED))["credentials"]
                await _next(reader, p.EV_READY)
                writer.write(p.encode_line({"op": p.OP_PAIR_CODE, "phone": PHONE}))
                late = await _next(reader, p.EV_ERROR)
                assert late["reason"] == p.REASON_NOT_PAIRING
            finally:
                writer.close()
            assert [(x.account, x.method) for x in simnet.pairings] == [("a/b", "code")]
            stats = simnet.stats()
            assert stats["pairing_codes_issued"] == 1
            assert stats["accounts"]["a/b"]["paired_by_code"] == 1
            assert stats["accounts"]["a/b"]["paired_by_qr"] == 0


async def _next(reader: asyncio.StreamReader, event: str) -> dict[str, Any]:
    """The next event of kind ``event`` (QR rotations and others skipped), within 5 s."""
    async with asyncio.timeout(5):
        while True:
            message = p.decode_line(await reader.readline())
            if message.get("ev") == event:
                return message


class TestDriverOption:
    """``--driver`` / ``SESSION_DRIVER`` picks the driver; a missing extra stops the start."""

    def test_sim_is_the_default_and_the_environment_or_the_flag_picks_another(self) -> None:
        assert node.load_config([], environ={}).driver == "sim"
        from_env = node.load_config([], environ={"SESSION_DRIVER": "whatsmeow"})
        assert from_env.driver == "whatsmeow"
        flag_wins = node.load_config(["--driver", "sim"], environ={"SESSION_DRIVER": "whatsmeow"})
        assert flag_wins.driver == "sim"
        with pytest.raises(SystemExit) as refused:
            node.load_config(["--driver", "baileys"], environ={})
        assert refused.value.code == 2

    def test_whatsmeow_without_its_extra_fails_at_start_naming_the_extra(
        self, tmp_path: Path
    ) -> None:
        # The node's own entry point, in a Python where neonize cannot be imported (as after a
        # plain `pip install sessionmesh`): None in sys.modules makes every import of it fail.
        hide_neonize = (
            "import sys; sys.modules['neonize'] = None; from node.__main__ import main; main()"
        )
        flags = [
            "--driver", "whatsmeow",
            "--node-id", "node-x",
            "--listen", "127.0.0.1:0",
            "--etcd", "http://127.0.0.1:9",  # never reached: the start stops before etcd
            "--storage", str(tmp_path / "sessions"),
            "--database-url", "",
            "--auth", "off",
        ]  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-c", hide_neonize, *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text"},
        )
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "node_start_failed" in output, output
        assert "pip install 'sessionmesh[whatsapp]'" in output, output
        assert "Traceback" not in output, output
