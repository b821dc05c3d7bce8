"""Shared fixtures: one real etcd per test session (the test kit's), a cluster name per test,
an etcd client, and the two small worlds many files test in: a gateway in front of echo nodes
(``tests/fakes.py``), and one real node on a simnet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aetcd
import grpc
import pytest
import structlog

from gateway import GatewayConfig, GatewayServer, start_gateway
from registry import (
    ClusterKeys,
    connect_etcd,
)
from registry.accounts import upgrade
from registry.auth import (
    AUTH_OFF_SETTINGS,
)
from simnet import SimNet
from testkit import EtcdProcess, RunningNode, etcd_in, eventually, running_node, running_simnet
from tests.fakes import RunningEchoNode, start_echo_node
from tests.test_migrations import server_database

pytest_plugins = ["tests.hang_report"]

# Events go to the standard library's logging (pytest shows them with a failed test), and no
# logger is cached, so structlog.testing.capture_logs() sees every one of them.
structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,
        structlog.stdlib.add_log_level,
        structlog.processors.format_exc_info,
        structlog.processors.KeyValueRenderer(key_order=["event"]),
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=False,
)

StartEchoNode = Callable[[str], Awaitable[RunningEchoNode]]
"""Starts an echo node with the given id in the test's cluster."""


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One real etcd for the whole test session."""
    server = etcd_in(tmp_path_factory.mktemp("etcd"))
    server.start_blocking()
    yield server
    server.stop_blocking()


@pytest.fixture
def etcd_url(etcd_server: EtcdProcess) -> str:
    """The etcd client URL."""
    return etcd_server.url


_cluster_counter = iter(range(1_000_000))


@pytest.fixture
def cluster_name(request: pytest.FixtureRequest) -> str:
    """A cluster name no other test uses, so tests sharing one etcd never see each other."""
    return f"t{next(_cluster_counter)}-{request.node.name[:30]}".replace("[", "-").replace("]", "")


@pytest.fixture
def keys(cluster_name: str) -> ClusterKeys:
    """The etcd key layout of this test's cluster."""
    return ClusterKeys(cluster_name)


@pytest.fixture
async def etcd(etcd_url: str) -> AsyncIterator[aetcd.Client]:
    """A connected etcd client."""
    client = await connect_etcd(etcd_url)
    yield client
    await client.close()


# -- a gateway in front of echo nodes -------------------------------------------------------


@pytest.fixture
async def gateway(etcd_url: str, cluster_name: str) -> AsyncIterator[GatewayServer]:
    """A gateway on a free port for this test's cluster."""
    server = await start_gateway(
        GatewayConfig(
            listen_address="127.0.0.1:0",
            etcd_endpoints=etcd_url,
            cluster=cluster_name,
            auth=AUTH_OFF_SETTINGS,
        )
    )
    yield server
    await server.stop(grace_seconds=0.5)


@pytest.fixture
async def channel(gateway: GatewayServer) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to the gateway."""
    async with grpc.aio.insecure_channel(gateway.address) as client_channel:
        yield client_channel


@pytest.fixture
async def echo_node_factory(etcd: aetcd.Client, cluster_name: str) -> AsyncIterator[StartEchoNode]:
    """Start echo nodes in this test's cluster; all stopped afterwards."""
    nodes: list[RunningEchoNode] = []

    async def start(node_id: str) -> RunningEchoNode:
        node = await start_echo_node(etcd, cluster_name, node_id)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


@pytest.fixture
async def two_nodes(
    echo_node_factory: StartEchoNode, gateway: GatewayServer
) -> dict[str, RunningEchoNode]:
    """Echo nodes n1 and n2 (they answer with their id and own nothing by themselves), both
    on the gateway's ring and in its membership."""
    nodes = {
        node.node_id: node
        for node in [await echo_node_factory("n1"), await echo_node_factory("n2")]
    }
    await eventually(
        lambda: (
            gateway.router.ring.ring.node_ids == ["n1", "n2"]
            and sorted(gateway.router.nodes) == ["n1", "n2"]
        ),
        message="the gateway sees both nodes",
    )
    return nodes


# -- one real node on a simnet --------------------------------------------------------------


@pytest.fixture
async def simnet() -> AsyncIterator[SimNet]:
    """A simnet on port 0 whose phone scans every QR code after 20 ms."""
    async with running_simnet() as net:
        yield net


@pytest.fixture
async def node(
    tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
) -> AsyncIterator[RunningNode]:
    """node-1 with the default limits, alone in this test's cluster, and a stub on it."""
    async with running_node(tmp_path, etcd_url, cluster_name, simnet) as running:
        yield running


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An accounts DB of each kind the mesh runs on, migrated to head (PostgreSQL and MariaDB
    where they run: a scratch database each)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'accounts.db'}"
        upgrade(url)
        yield url
    else:
        for url in server_database(request.param):
            upgrade(url)
            yield url
