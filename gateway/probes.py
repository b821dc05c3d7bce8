"""Health probes the gateway sends nodes on an operator's behalf.

Each probe runs over the router's pooled channel with a short timeout and reports failure as
data, never as an error: one sick node must not fail a fleet-wide admin call.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry import NodeRecord
from routing import Router

PROBE_TIMEOUT_SECONDS = 1.0
"""How long one probe waits for a node."""


async def health_of(router: Router, node: NodeRecord) -> tuple[bool, str]:
    """``(is_serving, status name or error)`` from the node's ``grpc.health.v1`` service."""
    stub = health_pb2_grpc.HealthStub(router.channels.channel_for(node.address))
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=PROBE_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as error:
        return False, f"{error.code().name}: {error.details() or ''}".rstrip(": ")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status
