"""The asyncio ``grpc.health.v1`` servicer every server of ours runs, typed.

grpc-stubs 1.53 has no ``grpc_health.v1.health.aio``; this module loads the asyncio servicer
once, behind a small Protocol of the part we use, so node and gateway share one shim.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from grpc_health.v1 import health_pb2


class HealthServicer(Protocol):
    """The part of grpc_health's asyncio servicer our servers use."""

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        """Publish ``status`` for ``service``."""

    async def enter_graceful_shutdown(self) -> None:
        """Answer NOT_SERVING for every service from now on."""


def new_health_servicer() -> HealthServicer:
    """A fresh asyncio health servicer (add it with ``add_HealthServicer_to_server``)."""
    servicer: HealthServicer = importlib.import_module("grpc_health.v1._async").HealthServicer()
    return servicer
