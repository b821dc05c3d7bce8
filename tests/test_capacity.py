"""A node at ``MAX_SESSIONS_PER_INSTANCE`` refuses new sessions with RESOURCE_EXHAUSTED and
keeps serving the ones it has."""

from __future__ import annotations

from pathlib import Path

import grpc

from simnet import SimNet
from testkit import running_node
from tests.calls import create, error_of


class TestAFullNode:
    """``--max-sessions 2``: the third session is refused, the first two still answer."""

    async def test_resource_exhausted_at_max_sessions(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        async with running_node(tmp_path, etcd_url, cluster_name, simnet, max_sessions=2) as node:
            await create(node.stub, "ws-1", "s-1")
            await create(node.stub, "ws-2", "s-2")
            error = await error_of(create(node.stub, "ws-1", "s-3"))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await create(node.stub, "ws-1", "s-1")  # the existing one is still returned
            assert not (node.storage / "workspace_ws-1" / "s-3").exists()
