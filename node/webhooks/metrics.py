"""The webhook metrics of a node (default registry, labelled by ``node_id`` like the rest)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

ATTEMPTS = Counter(
    "sessionmesh_node_webhook_attempts",
    "Webhook delivery attempts, by outcome: delivered (2xx), failed (to be retried), "
    "refused (a 4xx that is not retried).",
    ["node_id", "outcome"],
)
DELIVERIES = Counter(
    "sessionmesh_node_webhook_deliveries",
    "Events settled by webhook delivery, by outcome: delivered, dead_lettered, replayed.",
    ["node_id", "outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "sessionmesh_node_webhook_attempt_duration_seconds",
    "Time from sending a webhook request to its answer (or failure).",
    ["node_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
EVENT_TO_RECEIVER_SECONDS = Histogram(
    "sessionmesh_node_webhook_event_latency_seconds",
    "Time from an event being emitted to its receiver's 2xx.",
    ["node_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0),
)
OLDEST_UNDELIVERED = Gauge(
    "sessionmesh_node_webhook_oldest_undelivered_age_seconds",
    "Age of the oldest event this node is still trying to deliver (0: none).",
    ["node_id"],
)
CIRCUITS_OPENED = Counter(
    "sessionmesh_node_webhook_circuit_opened",
    "Times a receiver's circuit breaker opened.",
    ["node_id"],
)
OPEN_CIRCUITS = Gauge(
    "sessionmesh_node_webhook_open_circuits",
    "Receivers whose circuit breaker is open now.",
    ["node_id"],
)


class WebhookMetrics:
    """The webhook series of one node."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._attempt_seconds = ATTEMPT_SECONDS.labels(node_id)
        self._latency = EVENT_TO_RECEIVER_SECONDS.labels(node_id)
        for outcome in ("delivered", "failed", "refused"):
            ATTEMPTS.labels(node_id, outcome)
        for outcome in ("delivered", "dead_lettered", "replayed"):
            DELIVERIES.labels(node_id, outcome)

    def attempt(self, outcome: str, seconds: float) -> None:
        """One attempt ended."""
        ATTEMPTS.labels(self._node_id, outcome).inc()
        self._attempt_seconds.observe(seconds)

    def settled(self, outcome: str, *, latency_seconds: float | None = None) -> None:
        """One event was delivered, dead-lettered or replayed."""
        DELIVERIES.labels(self._node_id, outcome).inc()
        if latency_seconds is not None:
            self._latency.observe(latency_seconds)

    def circuit_opened(self) -> None:
        """A receiver's breaker opened."""
        CIRCUITS_OPENED.labels(self._node_id).inc()

    def watch(self, *, oldest_age: Callable[[], float], open_circuits: Callable[[], int]) -> None:
        """Read the gauges from these at every scrape."""
        OLDEST_UNDELIVERED.labels(self._node_id).set_function(oldest_age)
        OPEN_CIRCUITS.labels(self._node_id).set_function(open_circuits)
