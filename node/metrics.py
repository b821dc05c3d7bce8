"""The node's Prometheus metrics.

Module-level metrics in the default registry (the one ``telemetry.metrics`` serves), every
series labelled by ``node_id`` so several nodes in one process (tests) never collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

SESSIONS = Gauge(
    "sessionmesh_node_sessions",
    "Sessions hosted by the node, by state.",
    ["node_id", "state"],
)
UTILISATION = Gauge(
    "sessionmesh_node_utilisation_ratio",
    "Hosted sessions divided by MAX_SESSIONS_PER_INSTANCE.",
    ["node_id"],
)
CAPACITY = Gauge(
    "sessionmesh_node_capacity_sessions",
    "MAX_SESSIONS_PER_INSTANCE of the node.",
    ["node_id"],
)
RPC_LATENCY = Histogram(
    "sessionmesh_node_rpc_duration_seconds",
    "Time to answer a SessionService call, by method and status code.",
    ["node_id", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MESSAGES_ACCEPTED = Counter(
    "sessionmesh_node_messages_accepted",
    "Messages written to an outbox (duplicates not counted).",
    ["node_id"],
)
SESSIONS_RESTORED = Counter(
    "sessionmesh_node_sessions_restored",
    "Sessions started again from stored credentials.",
    ["node_id"],
)

HANDOFFS = Counter(
    "sessionmesh_node_handoffs",
    "Slots or pinned workspaces this node handed off (stopped, flushed, released).",
    ["node_id"],
)
ACQUISITIONS = Counter(
    "sessionmesh_node_acquisitions",
    "Slots or pinned workspaces this node acquired.",
    ["node_id"],
)
FAILOVERS = Counter(
    "sessionmesh_node_failovers",
    "Acquired slots whose previous owner was another node that is no longer alive.",
    ["node_id"],
)
FENCES = Counter(
    "sessionmesh_node_fencing_events",
    "Times this node stopped sessions because it lost a key, its lease or an epoch check.",
    ["node_id"],
)
LOOP_LAG = Gauge(
    "sessionmesh_node_loop_lag_seconds",
    "How late the node's event loop last ran a 0.25 s timer: how busy the loop is.",
    ["node_id"],
)
LOOP_LAG_HISTOGRAM = Histogram(
    "sessionmesh_node_loop_lag_distribution_seconds",
    "How late the node's event loop ran its 0.25 s timer, every tick.",
    ["node_id"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT = Gauge(
    "sessionmesh_node_work_in_flight",
    "Calls, restores and handoffs the node runs now (bounded by --max-in-flight).",
    ["node_id"],
)
SHED_CALLS = Counter(
    "sessionmesh_node_calls_shed",
    "Calls refused with RESOURCE_EXHAUSTED and a retry hint because the node was at its limit.",
    ["node_id"],
)
QUARANTINED = Counter(
    "sessionmesh_node_sessions_quarantined",
    "Stored sessions this node could not restore (unreadable files) and set aside.",
    ["node_id"],
)
ACCOUNTS_CHANGES_DROPPED = Counter(
    "sessionmesh_node_accounts_changes_dropped",
    "Accounts DB changes given up: queue_full (one per change refused by the full queue), "
    "row_refused and unwritten_at_stop (one per session whose queued changes were dropped).",
    ["node_id", "reason"],
)
ACCOUNTS_DB_UP = Gauge(
    "sessionmesh_node_accounts_db_up",
    "1 while the accounts DB answered the node's last attempt to reach it, 0 while it does not.",
    ["node_id"],
)
LEASE_AGE = Gauge(
    "sessionmesh_node_lease_age_seconds",
    "Seconds since etcd last confirmed a refresh of the node's lease (no lease: +Inf). Past "
    "the fencing limit (60 % of the TTL) the node fences itself.",
    ["node_id"],
)
ETCD_UP = Gauge(
    "sessionmesh_node_etcd_up",
    "1 while etcd confirms the node's lease in time (the node may serve), 0 while not.",
    ["node_id"],
)
ACCOUNTS_PENDING = Gauge(
    "sessionmesh_node_accounts_pending_sessions",
    "Sessions with accounts DB changes queued and not yet committed.",
    ["node_id"],
)
DROPPED = Counter(
    "sessionmesh_node_dropped",
    "Entries a full bounded queue dropped, by queue (driver_events: acks, inbound messages or "
    "QR codes of one session's driver; storage_statuses: message statuses not yet written) and "
    "kind.",
    ["node_id", "queue", "kind"],
)
REFUSED = Counter(
    "sessionmesh_node_refused",
    "Calls refused with RESOURCE_EXHAUSTED by a limit: outbox_quota (a session's undelivered "
    "messages), watchers (per session), storage_queue (writes waiting for the disk).",
    ["node_id", "limit"],
)
OWNED_SLOTS = Gauge(
    "sessionmesh_node_owned_slots",
    "Slots this node owns now.",
    ["node_id"],
)


class NodeMetrics:
    """The metrics of one node, bound to its id; the children of the per-call series are
    bound once (a ``labels()`` lookup per call showed in profiles of a busy node)."""

    def __init__(self, node_id: str, *, capacity: int) -> None:
        self._node_id = node_id
        self._capacity = capacity
        CAPACITY.labels(node_id).set(capacity)
        self._utilisation = UTILISATION.labels(node_id)
        self._utilisation.set(0)
        self._accepted = MESSAGES_ACCEPTED.labels(node_id)
        self._restored = SESSIONS_RESTORED.labels(node_id)
        self._acquisitions = ACQUISITIONS.labels(node_id)
        self._failovers = FAILOVERS.labels(node_id)
        self._handoffs = HANDOFFS.labels(node_id)
        self._fences = FENCES.labels(node_id)
        self._in_flight = IN_FLIGHT.labels(node_id)
        self._shed = SHED_CALLS.labels(node_id)
        self._loop_lag = LOOP_LAG.labels(node_id)
        self._loop_lag_histogram = LOOP_LAG_HISTOGRAM.labels(node_id)
        self._owned_slots = OWNED_SLOTS.labels(node_id)
        self._sessions: dict[str, Gauge] = {}
        self._latencies: dict[tuple[str, str], Histogram] = {}

    def _sessions_in(self, state: str) -> Gauge:
        child = self._sessions.get(state)
        if child is None:
            child = self._sessions[state] = SESSIONS.labels(self._node_id, state)
        return child

    def state_changed(self, previous: str | None, current: str | None) -> None:
        """A session moved between states (None: it appeared or went away)."""
        if previous is not None:
            self._sessions_in(previous).dec()
        if current is not None:
            self._sessions_in(current).inc()

    def hosted(self, count: int) -> None:
        """The node hosts ``count`` sessions now."""
        self._utilisation.set(count / self._capacity)

    def rpc_finished(self, method: str, code: str, duration_seconds: float) -> None:
        """One call answered."""
        child = self._latencies.get((method, code))
        if child is None:
            child = self._latencies[(method, code)] = RPC_LATENCY.labels(
                self._node_id, method, code
            )
        child.observe(duration_seconds)

    def message_accepted(self) -> None:
        """One new message is on disk."""
        self._accepted.inc()

    def session_restored(self) -> None:
        """One session was restored from storage."""
        self._restored.inc()

    def acquired(self, *, is_failover: bool) -> None:
        """One slot or pinned workspace acquired (``is_failover``: from a dead node)."""
        self._acquisitions.inc()
        if is_failover:
            self._failovers.inc()

    def handed_off(self) -> None:
        """One slot or pinned workspace handed off."""
        self._handoffs.inc()

    def fenced(self) -> None:
        """The node stopped sessions to fence itself."""
        self._fences.inc()

    def quarantined(self) -> None:
        """A stored session could not be restored and was set aside."""
        QUARANTINED.labels(self._node_id).inc()

    def in_flight(self, count: int) -> None:
        """The node runs ``count`` calls, restores and handoffs now."""
        self._in_flight.set(count)

    def call_shed(self) -> None:
        """A call was refused: the node was at its in-flight limit."""
        self._shed.inc()

    def loop_lag(self, seconds: float) -> None:
        """The event loop ran a timer ``seconds`` late."""
        self._loop_lag.set(seconds)
        self._loop_lag_histogram.observe(seconds)

    def accounts_changes_dropped(self, reason: str, count: int) -> None:
        """``count`` accounts DB changes were given up, for ``reason``."""
        ACCOUNTS_CHANGES_DROPPED.labels(self._node_id, reason).inc(count)

    def watch_accounts_pending(self, pending_sessions: Callable[[], int]) -> None:
        """Report ``pending_sessions()`` at every scrape."""
        ACCOUNTS_PENDING.labels(self._node_id).set_function(pending_sessions)

    def watch_accounts_db(self, is_up: Callable[[], bool]) -> None:
        """Report whether the accounts DB answers (``is_up()``) at every scrape."""
        ACCOUNTS_DB_UP.labels(self._node_id).set_function(lambda: 1.0 if is_up() else 0.0)

    def watch_lease(
        self, *, age_seconds: Callable[[], float], is_confirmed: Callable[[], bool]
    ) -> None:
        """Report the lease's age and whether etcd confirms it in time at every scrape."""
        LEASE_AGE.labels(self._node_id).set_function(age_seconds)
        ETCD_UP.labels(self._node_id).set_function(lambda: 1.0 if is_confirmed() else 0.0)

    def owned_slots(self, count: int) -> None:
        """The node owns ``count`` slots now."""
        self._owned_slots.set(count)

    def dropped(self, queue: str, kind: str) -> None:
        """A full ``queue`` dropped one entry of ``kind``."""
        DROPPED.labels(self._node_id, queue, kind).inc()

    def refused(self, limit: str) -> None:
        """A call was refused by ``limit``."""
        REFUSED.labels(self._node_id, limit).inc()
