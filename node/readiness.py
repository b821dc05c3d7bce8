"""What a node tells ``grpc.health.v1``: ``""`` — the process answers and its storage is
healthy (a liveness probe) — and the session service — ready for calls: storage healthy, the
lease held, not draining (a readiness probe; a load balancer or Kubernetes sends nothing to a
node that is handing its slots off or fenced). The webhook service follows the process."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2

from protos import SESSION_SERVICE_NAME
from telemetry import HealthServicer

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    """The node's health statuses, published whenever one of their inputs changes."""

    def __init__(self) -> None:
        self._servicer: HealthServicer | None = None
        self._is_storage_healthy = True
        self._has_lease = True
        self._is_draining = False
        self._published: dict[str, int] = {}
        self._publishing: set[asyncio.Task[None]] = set()

    def attach(self, servicer: HealthServicer) -> None:
        """Publish to ``servicer`` from now on."""
        self._servicer = servicer
        self._publish()

    def storage(self, is_healthy: bool) -> None:
        """Storage became healthy or stalled."""
        self._is_storage_healthy = is_healthy
        self._publish()

    def lease(self, is_held: bool) -> None:
        """The lease was lost (the node fenced itself) or is held again."""
        self._has_lease = is_held
        self._publish()

    def draining(self, is_draining: bool) -> None:
        """A drain (SIGTERM, an operator's drain) started or was withdrawn."""
        self._is_draining = is_draining
        self._publish()

    @property
    def is_ready(self) -> bool:
        """Whether the session service is SERVING."""
        return self._is_storage_healthy and self._has_lease and not self._is_draining

    def _publish(self) -> None:
        # Scheduled: the health servicer is async, and the inputs change from callbacks.
        servicer = self._servicer
        if servicer is None:
            return
        wanted = {
            "": _SERVING if self._is_storage_healthy else _NOT_SERVING,
            SESSION_SERVICE_NAME: _SERVING if self.is_ready else _NOT_SERVING,
        }
        changed = {
            name: status for name, status in wanted.items() if self._published.get(name) != status
        }
        if not changed:
            return
        self._published.update(changed)

        async def publish() -> None:
            for service_name, status in changed.items():
                await servicer.set(service_name, status)

        task = asyncio.get_running_loop().create_task(publish(), name="publish-health")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
