"""TLS on the mesh's gRPC (``--tls-cert``/``--tls-key``/``--tls-ca``): a node serves mutual TLS
only and refuses a caller without a certificate from the mesh CA; the gateway serves TLS only
(a client certificate optional) and dials nodes with its own; the proxyless client and
meshctl dial with theirs. Certificates come from ``make certs`` (``deploy.certs``)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

import gateway
from client.proxyless import ProxylessClient
from deploy.certs import IssuedFiles, issue
from protos import session_pb2 as pb
from protos import session_pb2_grpc
from registry import Unavailable, load_tls
from simnet import SimNet
from telemetry import start_metrics_server
from testkit import RunningNode, running_node

SESSION = ("ws-tls", "s-1")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> IssuedFiles:
    return issue(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory: pytest.TempPathFactory) -> IssuedFiles:
    """Certificates of another CA: not the mesh's."""
    return issue(tmp_path_factory.mktemp("foreign"))


@pytest.fixture
async def tls_node(
    tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet, certs: IssuedFiles
) -> AsyncIterator[RunningNode]:
    async with running_node(
        tmp_path, etcd_url, cluster_name, simnet, extra_flags=certs.flags("node")
    ) as node:
        yield node


@pytest.fixture
async def tls_gateway(
    etcd_url: str, cluster_name: str, certs: IssuedFiles, tls_node: RunningNode
) -> AsyncIterator[gateway.GatewayServer]:
    config = gateway.load_config(
        [
            "--listen", "127.0.0.1:0", "--etcd", etcd_url, "--cluster", cluster_name,
            "--auth", "off", *certs.flags("gateway"),
        ],
        environ={},
    )  # fmt: skip
    server = await gateway.start_gateway(config)
    yield server
    await server.stop(grace_seconds=0.5)


def _credentials(
    files: IssuedFiles, role: str, *, with_certificate: bool
) -> grpc.ChannelCredentials:
    ca = files.certificate("ca").read_bytes()
    if not with_certificate:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=files.key(role).read_bytes(),
        certificate_chain=files.certificate(role).read_bytes(),
    )


async def _create(channel: grpc.aio.Channel) -> pb.Session:
    stub = session_pb2_grpc.SessionServiceStub(channel)
    request = pb.CreateSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1])
    session: pb.Session = await stub.CreateSession(request, timeout=10)
    return session


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _create(channel)
    return raised.value.code()


class TestANodeServesMutualTlsOnly:
    async def test_only_a_caller_with_a_mesh_certificate_gets_in(
        self, tls_node: RunningNode, certs: IssuedFiles, foreign_certs: IssuedFiles
    ) -> None:
        address = tls_node.server.address
        async with grpc.aio.insecure_channel(address) as plaintext:
            assert await _refused(plaintext) == grpc.StatusCode.UNAVAILABLE
        no_certificate = _credentials(certs, "client", with_certificate=False)
        async with grpc.aio.secure_channel(address, no_certificate) as anonymous:
            assert await _refused(anonymous) == grpc.StatusCode.UNAVAILABLE
        foreign = grpc.ssl_channel_credentials(
            root_certificates=certs.certificate("ca").read_bytes(),
            private_key=foreign_certs.key("client").read_bytes(),
            certificate_chain=foreign_certs.certificate("client").read_bytes(),
        )
        async with grpc.aio.secure_channel(address, foreign) as stranger:
            assert await _refused(stranger) == grpc.StatusCode.UNAVAILABLE
        mesh = _credentials(certs, "client", with_certificate=True)
        async with grpc.aio.secure_channel(address, mesh) as member:
            created = await _create(member)
        assert created.session_id == SESSION[1]


class TestTheGatewayServesTls:
    async def test_a_tls_caller_reaches_the_node_through_it_and_plaintext_does_not(
        self, tls_gateway: gateway.GatewayServer, certs: IssuedFiles
    ) -> None:
        async with grpc.aio.insecure_channel(tls_gateway.address) as plaintext:
            assert await _refused(plaintext) == grpc.StatusCode.UNAVAILABLE
        # No client certificate needed at the public listener; the gateway's own one gets
        # it to the node, which would refuse the caller itself.
        server_only = _credentials(certs, "client", with_certificate=False)
        async with grpc.aio.secure_channel(tls_gateway.address, server_only) as caller:
            created = await _create(caller)
        assert created.node_id == "node-1"

    async def test_meshctl_talks_tls_with_the_flags_and_fails_without(
        self, tls_gateway: gateway.GatewayServer, certs: IssuedFiles
    ) -> None:
        command = ["nodes", "--gateway", tls_gateway.address, "--json"]
        code, output = await _meshctl(*certs.flags("client"), *command)
        assert code == 0, output
        assert json.loads(output)["nodes"][0]["node_id"] == "node-1"
        code, output = await _meshctl(*command)
        assert code == 1, output


async def _meshctl(*args: str) -> tuple[int, str]:
    """``python -m client.meshctl`` as a subprocess (the test's loop serves the mesh)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONMESH_TLS")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.meshctl", *args,
        env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


class TestTheProxylessClientDialsWithItsCertificate:
    async def test_with_the_mesh_certificate_it_calls_the_node_and_without_it_cannot(
        self, tls_node: RunningNode, certs: IssuedFiles, etcd_url: str, cluster_name: str
    ) -> None:
        tls = load_tls(
            str(certs.certificate("client")), str(certs.key("client")), str(certs.certificate("ca"))
        )
        request = pb.CreateSessionRequest(workspace_id=SESSION[0], session_id=SESSION[1])
        async with await ProxylessClient.connect(
            etcd_endpoints=etcd_url, cluster=cluster_name, tls=tls
        ) as client:
            created = await client.CreateSession(request, timeout=10)
        assert created.node_id == "node-1"
        async with await ProxylessClient.connect(
            etcd_endpoints=etcd_url, cluster=cluster_name
        ) as plaintext:
            with pytest.raises((grpc.aio.AioRpcError, Unavailable)) as refused:
                await plaintext.CreateSession(request, timeout=3)
        print(f"plaintext proxyless client refused: {refused.value!r}"[:300])


class TestTlsFlags:
    def test_one_or_two_of_the_three_is_refused_with_a_message(
        self, certs: IssuedFiles, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exited:
            gateway.load_config(["--tls-cert", str(certs.certificate("gateway"))], environ={})
        assert exited.value.code == 2
        assert "missing --tls-key, --tls-ca" in capsys.readouterr().err

    def test_the_environment_names_them_too(self, certs: IssuedFiles) -> None:
        config = gateway.load_config(
            [],
            environ={
                "SESSIONMESH_TLS_CERT": str(certs.certificate("gateway")),
                "SESSIONMESH_TLS_KEY": str(certs.key("gateway")),
                "SESSIONMESH_TLS_CA": str(certs.certificate("ca")),
            },
        )
        assert config.tls is not None
        assert "KEY" not in repr(config.tls) and b"PRIVATE" in config.tls.private_key


class TestTheMetricsEndpoint:
    def test_with_tls_it_serves_https_only(self, certs: IssuedFiles) -> None:
        tls = load_tls(
            str(certs.certificate("node")), str(certs.key("node")), str(certs.certificate("ca"))
        )
        address = start_metrics_server("127.0.0.1:0", tls=tls)
        context = ssl.create_default_context(cafile=str(certs.certificate("ca")))
        with urllib.request.urlopen(f"https://{address}/metrics", context=context) as answer:
            assert b"python_info" in answer.read()
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read()
