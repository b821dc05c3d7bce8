"""Fakes for tests of the gateway and the clients: an :class:`EchoNode`, a small real gRPC
node that answers with its own id, echoes ``x-`` metadata, and fails on request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aetcd
import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from protos import session_pb2, session_pb2_grpc
from registry import (
    OWNER_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    ClusterKeys,
    NodeRecord,
    NodeRegistration,
)
from telemetry import server_interceptors

WATCH_EVENT_COUNT = 3
"""How many events an echo node's WatchSession streams before it ends."""
RICH_STATUS_KEY = "grpc-status-details-bin"
"""Where gRPC carries a google.rpc.Status with error details."""


class EchoNode(session_pb2_grpc.SessionServiceServicer):
    """A small real node: answers with its id, echoes ``x-`` metadata, fails on request."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.redirects: dict[str, str] = {}
        """workspace → ``owner`` metadata value CreateSession answers FAILED_PRECONDITION with."""
        self.unavailable_left: dict[str, int] = {}
        """workspace → how many DeleteSession calls still answer UNAVAILABLE."""
        self.calls: list[str] = []
        self.time_remaining_seconds: list[float | None] = []
        """What ``context.time_remaining()`` said at the start of each ListSessions call."""

    def _session(self, request: Any, context: Any) -> session_pb2.Session:
        labels = {
            key: value for key, value in context.invocation_metadata() or () if key.startswith("x-")
        }
        return session_pb2.Session(
            workspace_id=request.workspace_id,
            session_id=request.session_id,
            node_id=self.node_id,
            labels=labels,
        )

    async def GetSession(self, request: Any, context: Any) -> Any:
        self.calls.append(request.workspace_id)
        if request.session_id == "rich":
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason="SESSION_GONE", domain="test"))
            rich = status_pb2.Status(code=5, message="gone, with details", details=[detail])
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                rich.message,
                trailing_metadata=((RICH_STATUS_KEY, rich.SerializeToString()),),
            )
        if request.session_id == "missing":
            context.set_trailing_metadata((("x-reason", "gone"),))
            await context.abort(grpc.StatusCode.NOT_FOUND, f"session missing on {self.node_id}")
        context.set_trailing_metadata((("x-served-by", self.node_id),))
        return self._session(request, context)

    async def ListSessions(self, request: Any, context: Any) -> Any:
        self.time_remaining_seconds.append(context.time_remaining())
        await asyncio.sleep(30)  # slow on purpose: ended by the caller's deadline
        return session_pb2.ListSessionsResponse()

    async def CreateSession(self, request: Any, context: Any) -> Any:
        self.calls.append(request.workspace_id)
        owner = self.redirects.get(request.workspace_id)
        if owner:
            context.set_trailing_metadata(((OWNER_METADATA_KEY, owner),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the owner")
        return self._session(request, context)

    async def DeleteSession(self, request: Any, context: Any) -> Any:
        self.calls.append(request.workspace_id)
        left = self.unavailable_left.get(request.workspace_id, 0)
        if left:
            self.unavailable_left[request.workspace_id] = left - 1
            context.set_trailing_metadata(((RETRY_AFTER_METADATA_KEY, "10"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "handoff in progress")
        return self._session(request, context)

    async def WatchSession(self, request: Any, context: Any) -> Any:
        for index in range(WATCH_EVENT_COUNT):
            yield session_pb2.SessionEvent(
                workspace_id=request.workspace_id,
                session_id=f"{self.node_id}-{index}",
            )


@dataclass
class RunningEchoNode:
    """An echo node's server, servicer and etcd registration."""

    servicer: EchoNode
    server: grpc.aio.Server
    registration: NodeRegistration
    address: str

    @property
    def node_id(self) -> str:
        """The node's id."""
        return self.servicer.node_id

    async def stop(self) -> None:
        """Deregister, then stop serving."""
        await self.registration.stop()
        await self.server.stop(None)


async def start_echo_node(etcd: aetcd.Client, cluster: str, node_id: str) -> RunningEchoNode:
    """Serve an :class:`EchoNode` on a free port and register it in ``cluster``."""
    server = grpc.aio.server(interceptors=server_interceptors())
    servicer = EchoNode(node_id)
    session_pb2_grpc.add_SessionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    registration = NodeRegistration(
        etcd, ClusterKeys(cluster), NodeRecord(node_id=node_id, address=address, capacity=100)
    )
    await registration.start()
    return RunningEchoNode(servicer, server, registration, address)
