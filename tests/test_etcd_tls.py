"""etcd over TLS with client certificates (``--etcd-cacert``, ``--etcd-cert``,
``--etcd-key``), and the role ``deploy.etcd_access`` gives a cluster's processes: its own key
prefix and nothing else. A real etcd with ``--client-cert-auth``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aetcd
import grpc
import pytest

import gateway
from deploy.certs import IssuedFiles, issue
from deploy.etcd_access import restrict_to_cluster
from protos import session_pb2 as pb
from protos import session_pb2_grpc
from registry import (
    EtcdClient,
    EtcdTls,
    InvalidInput,
    Unavailable,
    connect_etcd,
    load_etcd_tls,
    parse_endpoints,
)
from simnet import SimNet
from testkit import EtcdProcess, EtcdServerTls, etcd_in, eventually, running_node
from tests.calls import create, wait_state


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> IssuedFiles:
    return issue(tmp_path_factory.mktemp("certs"))


def _tls(certs: IssuedFiles, role: str) -> EtcdTls:
    tls = load_etcd_tls(
        str(certs.certificate("ca")), str(certs.certificate(role)), str(certs.key(role))
    )
    assert tls is not None
    return tls


@pytest.fixture
async def tls_etcd(tmp_path: Path, certs: IssuedFiles) -> AsyncIterator[EtcdProcess]:
    etcd = replace(
        etcd_in(tmp_path),
        tls=EtcdServerTls(certs.certificate("etcd"), certs.key("etcd"), certs.certificate("ca")),
    )
    await etcd.start()
    yield etcd
    await etcd.stop()


@pytest.fixture
async def root(tls_etcd: EtcdProcess, certs: IssuedFiles) -> AsyncIterator[EtcdClient]:
    client = await connect_etcd(tls_etcd.url, tls=_tls(certs, "etcd-root"))
    yield client
    await client.close()


class TestTheFlags:
    def test_an_https_endpoint_needs_etcd_tls_and_etcd_tls_refuses_http(
        self, certs: IssuedFiles
    ) -> None:
        with pytest.raises(InvalidInput, match="give --etcd-cacert"):
            parse_endpoints("https://127.0.0.1:2379")
        with pytest.raises(InvalidInput, match="plaintext"):
            parse_endpoints("http://127.0.0.1:2379", tls=_tls(certs, "node"))
        assert parse_endpoints("127.0.0.1:2379", tls=_tls(certs, "node")) == [("127.0.0.1", 2379)]

    def test_all_three_files_or_none(self, certs: IssuedFiles) -> None:
        assert load_etcd_tls("", "", "") is None
        with pytest.raises(InvalidInput, match="missing --etcd-key"):
            load_etcd_tls(str(certs.certificate("ca")), str(certs.certificate("node")), "")
        with pytest.raises(InvalidInput, match="--etcd-key must be a PEM private key"):
            load_etcd_tls(
                str(certs.certificate("ca")),
                str(certs.certificate("node")),
                str(certs.certificate("node")),
            )
        tls = _tls(certs, "node")
        assert "PRIVATE" not in repr(tls)

    def test_the_node_and_gateway_read_etcdctls_variables(self, certs: IssuedFiles) -> None:
        environ = {
            "ETCDCTL_CACERT": str(certs.certificate("ca")),
            "ETCDCTL_CERT": str(certs.certificate("gateway")),
            "ETCDCTL_KEY": str(certs.key("gateway")),
            "ETCD_ENDPOINTS": "https://127.0.0.1:2379",
        }
        config = gateway.load_config([], environ=environ)
        assert config.etcd_tls == _tls(certs, "gateway")


class TestTheConnection:
    async def test_a_client_with_a_mesh_certificate_reads_and_writes(
        self, tls_etcd: EtcdProcess, certs: IssuedFiles
    ) -> None:
        client = await connect_etcd(tls_etcd.url, tls=_tls(certs, "node"))
        try:
            await client.put(b"/sessionmesh/c/k", b"v")
            assert (await client.get(b"/sessionmesh/c/k")).value == b"v"
        finally:
            await client.close()

    async def test_a_client_without_a_certificate_cannot_write(
        self, tls_etcd: EtcdProcess, certs: IssuedFiles, tmp_path: Path
    ) -> None:
        plaintext_url = tls_etcd.url.replace("https://", "http://")
        with pytest.raises(Unavailable):
            await connect_etcd(plaintext_url, call_timeout_seconds=1, health_interval_seconds=1)
        # TLS that trusts etcd but brings no certificate of its own: the handshake fails.
        ca_only = grpc.ssl_channel_credentials(
            root_certificates=certs.certificate("ca").read_bytes()
        )
        client = EtcdClient(
            parse_endpoints(tls_etcd.url, tls=_tls(certs, "node")),
            credentials=ca_only,
            call_timeout_seconds=2,
        )
        try:
            with pytest.raises(aetcd.ClientError):
                await client.put(b"/sessionmesh/c/k", b"stranger")
        finally:
            await client.close()
        # A certificate of another CA is refused the same way.
        foreign = issue(tmp_path / "foreign")
        with pytest.raises(Unavailable):
            await connect_etcd(
                tls_etcd.url,
                tls=EtcdTls(
                    ca=certs.certificate("ca").read_bytes(),
                    certificate=foreign.certificate("node").read_bytes(),
                    key=foreign.key("node").read_bytes(),
                ),
                call_timeout_seconds=1,
                health_interval_seconds=1,
            )


class TestTheRole:
    async def test_a_clusters_users_reach_its_prefix_and_nothing_else(
        self, tls_etcd: EtcdProcess, certs: IssuedFiles, root: EtcdClient
    ) -> None:
        done = await restrict_to_cluster(
            root, cluster="c1", users=["sessionmesh-node", "sessionmesh-gateway"]
        )
        assert "authentication enabled" in done
        assert await restrict_to_cluster(root, cluster="c1", users=["sessionmesh-node"]) == []
        node = await connect_etcd(tls_etcd.url, tls=_tls(certs, "node"))
        stranger = await connect_etcd(tls_etcd.url, tls=_tls(certs, "client"))
        try:
            await node.put(b"/sessionmesh/c1/nodes/x", b"v")
            assert (await node.get(b"/sessionmesh/c1/nodes/x")).value == b"v"
            lease = await node.lease(5)  # the heartbeat's lease
            await node.put(b"/sessionmesh/c1/nodes/y", b"v", lease=lease)
            for key in (b"/sessionmesh/c2/nodes/x", b"/elsewhere", b"/sessionmesh/c1"):
                with pytest.raises(aetcd.ClientError):
                    await node.put(key, b"intruder")
            with pytest.raises(aetcd.ClientError):
                await node.get_prefix(b"/sessionmesh/")  # other clusters' keys: not readable
            # A certificate of the mesh CA whose user has no role can do nothing.
            for call in (
                stranger.put(b"/sessionmesh/c1/nodes/z", b"x"),
                stranger.get(b"/sessionmesh/c1/nodes/x"),
            ):
                with pytest.raises(aetcd.ClientError):
                    await call
        finally:
            await node.close()
            await stranger.close()

    async def test_a_node_and_a_gateway_run_over_tls_with_only_their_role(
        self, tls_etcd: EtcdProcess, certs: IssuedFiles, tmp_path: Path, simnet: SimNet
    ) -> None:
        cluster_name = "tls-mesh"
        root = await connect_etcd(tls_etcd.url, tls=_tls(certs, "etcd-root"))
        try:
            await restrict_to_cluster(
                root, cluster=cluster_name, users=["sessionmesh-node", "sessionmesh-gateway"]
            )
        finally:
            await root.close()
        node_flags = ["--etcd", tls_etcd.url, *certs.etcd_flags("node")]
        async with running_node(
            tmp_path, tls_etcd.url, cluster_name, simnet, extra_flags=node_flags
        ) as node:
            config = gateway.load_config(
                [
                    "--listen", "127.0.0.1:0", "--etcd", tls_etcd.url, "--cluster", cluster_name,
                    "--auth", "off", *certs.etcd_flags("gateway"),
                ],
                environ={},
            )  # fmt: skip
            server = await gateway.start_gateway(config)
            try:
                await eventually(lambda: server.router.ring.ring.node_ids == ["node-1"])
                async with grpc.aio.insecure_channel(server.address) as channel:
                    stub = session_pb2_grpc.SessionServiceStub(channel)
                    await create(stub, "ws-etcd-tls", "s-1")
                    await wait_state(stub, "ws-etcd-tls", "s-1", pb.SESSION_STATE_READY)
                assert node.server.node_id == "node-1"
            finally:
                await server.stop(grace_seconds=0.5)
