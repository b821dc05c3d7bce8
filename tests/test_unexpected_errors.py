"""A failure nobody planned for is INTERNAL with a generic message; details stay in the log,
and the node goes on serving."""

from __future__ import annotations

from pathlib import Path

import grpc

from node.drivers.base import Driver
from protos import session_pb2 as pb
from simnet import SimNet
from testkit import running_node
from tests.calls import create, error_of


class TestABrokenDriver:
    """A driver factory that raises: the create fails INTERNAL, other calls still answer."""

    async def test_an_internal_error_hides_its_details(
        self, tmp_path: Path, etcd_url: str, cluster_name: str, simnet: SimNet
    ) -> None:
        def broken_factory(workspace_id: str, session_id: str) -> Driver:
            raise RuntimeError("secret driver detail")

        async with running_node(
            tmp_path, etcd_url, cluster_name, simnet, driver_factory=broken_factory
        ) as node:
            error = await error_of(create(node.stub, "ws-1", "s-1"))
            assert error.code() == grpc.StatusCode.INTERNAL
            assert error.details() == "internal error"
            # The node goes on serving.
            got = await error_of(
                node.stub.GetSession(pb.GetSessionRequest(workspace_id="ws-1", session_id="s-9"))
            )
            assert got.code() == grpc.StatusCode.NOT_FOUND
