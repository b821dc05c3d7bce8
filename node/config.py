"""A node's configuration: flags win over environment variables, which win over defaults.

::

    --node-id              NODE_ID (or INSTANCE_ID)       hostname-based
    --listen HOST:PORT     NODE_LISTEN                    127.0.0.1:7001 (port 0: any free port)
    --advertise HOST:PORT  NODE_ADVERTISE                 listen host with the bound port
    --etcd URL[,URL…]      ETCD_ENDPOINTS                 http://127.0.0.1:2379
    --cluster              SESSIONMESH_CLUSTER            default
    --storage PATH         SESSION_STORAGE_PATH           .mesh/sessions
    --max-sessions N       MAX_SESSIONS_PER_INSTANCE      500
    --database-url URL     DATABASE_URL                   sqlite:///.mesh/accounts.db ('' = off)
    --accounts-max-pending-sessions ACCOUNTS_MAX_PENDING_SESSIONS 20000
    --driver sim|whatsmeow SESSION_DRIVER                 sim (whatsmeow: the whatsapp extra)
    --simnet HOST:PORT     SIMNET_ADDR                    127.0.0.1:7100
    --metrics-listen H:P   METRICS_LISTEN                 '' (off)
    --lease-ttl-seconds    LEASE_TTL_SECONDS              5
    --zone                 NODE_ZONE                      ''
    --restore-concurrency  RESTORE_CONCURRENCY            32
    --reconcile-interval-seconds RECONCILE_INTERVAL_SECONDS 1
    --max-moves-in-flight  MAX_MOVES_IN_FLIGHT            64
    --loop-stall-limit-seconds LOOP_STALL_LIMIT_SECONDS   10
    --max-in-flight        MAX_IN_FLIGHT                  256
    --storage-timeout-seconds STORAGE_TIMEOUT_SECONDS     10
    --outbox-max-queued    OUTBOX_MAX_QUEUED              10000 (per session)
    --max-watchers-per-session MAX_WATCHERS_PER_SESSION   64
    --shutdown-grace-seconds SHUTDOWN_GRACE_SECONDS       20
    --tls-cert/--tls-key/--tls-ca SESSIONMESH_TLS_CERT/_KEY/_CA  off (mutual TLS: see registry.tls)
    --etcd-cacert/--etcd-cert/--etcd-key ETCDCTL_CACERT/_CERT/_KEY  off (see registry.etcd_tls)
    --max-message-bytes    MAX_MESSAGE_BYTES              65536 (largest request accepted)
    --max-streams-per-connection MAX_STREAMS_PER_CONNECTION 10000 (calls open at once)
    --max-sessions-per-workspace MAX_SESSIONS_PER_WORKSPACE  1000 (0: no quota)
    --sends-per-second-per-workspace SENDS_PER_SECOND_PER_WORKSPACE 100 (0: no quota)
    --auth                 SESSIONMESH_AUTH               tokens (or off: no checks, warned)
    --admin-token-file     SESSIONMESH_ADMIN_TOKEN_FILE   none (the first admin token)
    --webhook-allow-private SESSIONMESH_WEBHOOK_ALLOW_PRIVATE false (loopback/private URLs)
    --webhook-retry-schedule WEBHOOK_RETRY_SCHEDULE       5s,30s,2m,10m,30m,1h,3h,6h,12h
    --webhook-timeout-seconds WEBHOOK_TIMEOUT_SECONDS     10 (one attempt)
    --webhook-max-concurrency WEBHOOK_MAX_CONCURRENCY     16 (requests at once per receiver)
    --log-level            LOG_LEVEL                      INFO
    --log-format           LOG_FORMAT                     text (or json)

A bad value ends the process with a message naming it and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.session_limits import DEFAULT_MAX_WATCHERS_PER_SESSION, DEFAULT_OUTBOX_MAX_QUEUED
from node.webhooks.schedule import (
    DEFAULT_SCHEDULE,
    DEFAULT_SCHEDULE_TEXT,
    RetrySchedule,
    parse_schedule,
)
from node.webhooks.sender import DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT_SECONDS
from node.workspace_quotas import (
    DEFAULT_MAX_SESSIONS_PER_WORKSPACE,
    DEFAULT_SENDS_PER_SECOND_PER_WORKSPACE,
)
from registry import (
    DEFAULT_CLUSTER,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_NODE_STREAMS_PER_CONNECTION,
    MIN_MAX_MESSAGE_BYTES,
    EtcdTls,
    InvalidInput,
    TlsMaterial,
    add_etcd_tls_flags,
    add_tls_flags,
    etcd_tls_from_args,
    first_set,
    parse_endpoints,
    parse_flags,
    parse_host_port,
    parse_log_format,
    parse_log_level,
    positive_seconds,
    tls_from_args,
    validate_id,
    whole_number,
)
from registry.accounts import DEFAULT_MAX_PENDING_SESSIONS
from registry.auth import (
    TOKENS_REQUIRED,
    AuthSettings,
    add_auth_flags,
    auth_from_args,
)
from registry.webhooks import add_webhook_flags, allow_private_from_args

DEFAULT_LISTEN = "127.0.0.1:7001"
DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_STORAGE = ".mesh/sessions"
DEFAULT_MAX_SESSIONS = 500
DEFAULT_DATABASE_URL = "sqlite:///.mesh/accounts.db"
DEFAULT_SIMNET = "127.0.0.1:7100"
SIM_DRIVER = "sim"
WHATSMEOW_DRIVER = "whatsmeow"
DRIVERS = (SIM_DRIVER, WHATSMEOW_DRIVER)
"""The drivers ``--driver`` may name."""
DEFAULT_LEASE_TTL_SECONDS = 5
DEFAULT_RESTORE_CONCURRENCY = 32
DEFAULT_RECONCILE_INTERVAL_SECONDS = 1.0
DEFAULT_MAX_MOVES_IN_FLIGHT = 64
DEFAULT_LOOP_STALL_LIMIT_SECONDS = 10.0
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_STORAGE_TIMEOUT_SECONDS = 10.0
DEFAULT_SHUTDOWN_GRACE_SECONDS = 20.0
MIN_LEASE_TTL_SECONDS = 2


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to start."""

    node_id: str
    """This node's id in etcd, the accounts DB and session meta; stable across restarts."""
    listen_address: str = DEFAULT_LISTEN
    """host:port the gRPC server binds; port 0 picks a free port."""
    advertise_address: str = ""
    """host:port published in etcd for others to dial; empty = listen host, bound port."""
    etcd_endpoints: str = DEFAULT_ETCD
    """Comma-separated etcd client URLs."""
    cluster: str = DEFAULT_CLUSTER
    """Cluster name: the etcd key prefix shared by the nodes and gateways of one mesh."""
    storage_path: Path = Path(DEFAULT_STORAGE)
    """Root of the shared session storage."""
    max_sessions: int = DEFAULT_MAX_SESSIONS
    """MAX_SESSIONS_PER_INSTANCE: the most sessions this node hosts (its ring weight)."""
    database_url: str = DEFAULT_DATABASE_URL
    """Accounts DB URL (SQLAlchemy form); empty turns the accounts DB off."""
    accounts_max_pending_sessions: int = DEFAULT_MAX_PENDING_SESSIONS
    """Sessions with accounts DB changes queued, at most (while the DB is down or slow); past
    it a change for a session with nothing queued is dropped and counted."""
    driver: str = SIM_DRIVER
    """The driver sessions talk to their network through: ``sim`` (simnet, built in) or
    ``whatsmeow`` (WhatsApp through neonize: needs ``pip install 'sessionmesh[whatsapp]'``)."""
    simnet_address: str = DEFAULT_SIMNET
    """host:port of simnet, for the built-in sim driver."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint; empty = off."""
    lease_ttl_seconds: int = DEFAULT_LEASE_TTL_SECONDS
    """TTL of the node's etcd lease: how fast the mesh notices this node died."""
    zone: str = ""
    """Failure zone (e.g. an availability zone), published in the node record."""
    restore_concurrency: int = DEFAULT_RESTORE_CONCURRENCY
    """Sessions restored at once (start, failover, handoff), so a boot does not spike the CPU."""
    reconcile_interval_seconds: float = DEFAULT_RECONCILE_INTERVAL_SECONDS
    """Seconds between two reconciler passes when nothing changes (a change wakes it at once)."""
    max_moves_in_flight: int = DEFAULT_MAX_MOVES_IN_FLIGHT
    """Slot acquires and handoffs this node runs at once: paces failovers and joins."""
    loop_stall_limit_seconds: float = DEFAULT_LOOP_STALL_LIMIT_SECONDS
    """How long the event loop may make no progress before the node gives its lease up (a
    wedged node must fail over); a busy loop below this keeps its lease."""
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    """Calls, restores and handoffs the node runs at once; a call past it is refused with
    RESOURCE_EXHAUSTED and a retry hint (the gateway retries it), never queued."""
    storage_timeout_seconds: float = DEFAULT_STORAGE_TIMEOUT_SECONDS
    """How long one storage call may take; past it the call fails with UNAVAILABLE, and a
    node whose storage stops answering serves NOT_SERVING and gives its lease up."""
    outbox_max_queued: int = DEFAULT_OUTBOX_MAX_QUEUED
    """Messages one session may hold that the network has not acknowledged; a send past it
    is refused with RESOURCE_EXHAUSTED and a retry hint."""
    max_watchers_per_session: int = DEFAULT_MAX_WATCHERS_PER_SESSION
    """Open WatchSession streams per session; one more is refused with RESOURCE_EXHAUSTED."""
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    """How long a SIGTERM'd node may take to exit: its slots are handed off within most of
    it (a handoff still running then is cut short), then it stops what is left and exits."""
    tls: TlsMaterial | None = None
    """Serve mutual TLS only (callers need a certificate from the mesh CA); None: plaintext."""
    etcd_tls: EtcdTls | None = None
    """TLS to etcd with this client certificate (``--etcd-cacert``…); None: plaintext."""
    auth: AuthSettings = TOKENS_REQUIRED
    """Whether calls need bearer tokens (the default), and the bootstrap admin token."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_streams_per_connection: int = DEFAULT_NODE_STREAMS_PER_CONNECTION
    """Calls one client connection may have open at once (HTTP/2's concurrent streams)."""
    """The largest request accepted; past it gRPC answers RESOURCE_EXHAUSTED."""
    max_sessions_per_workspace: int = DEFAULT_MAX_SESSIONS_PER_WORKSPACE
    """Sessions one workspace may have (0: no quota); one more is RESOURCE_EXHAUSTED."""
    sends_per_second_per_workspace: float = DEFAULT_SENDS_PER_SECOND_PER_WORKSPACE
    """One workspace's send rate (bursts of twice as many; 0: no quota); past it a send is
    RESOURCE_EXHAUSTED with the wait as its retry hint."""
    webhook_allow_private: bool = False
    """Whether webhooks may point at loopback, link-local and private addresses."""
    webhook_retry_schedule: RetrySchedule = DEFAULT_SCHEDULE
    """The delays before each retry of a webhook delivery."""
    webhook_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    """How long one webhook attempt may take."""
    webhook_max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    """Webhook requests this node has open at once to one receiver."""
    log_level: str = "INFO"
    """Root log level."""
    log_format: str = "text"
    """``text`` (key=value lines) or ``json`` (one object per line)."""


def default_node_id() -> str:
    """``node-<hostname>``, with every character an id may not hold replaced by ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:59].strip("-")
    return f"node-{cleaned or 'local'}"


def _build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(*names: str, default: str = "") -> str:
        return first_set(environ, *names, default=default)

    parser = argparse.ArgumentParser(
        prog="sessionmesh-node", description="Host sessionmesh sessions and serve their API."
    )
    add = parser.add_argument
    add("--node-id", default=env("NODE_ID", "INSTANCE_ID"), help="default: node-<hostname>")
    add("--listen", default=env("NODE_LISTEN", default=DEFAULT_LISTEN), metavar="HOST:PORT")
    add("--advertise", default=env("NODE_ADVERTISE"), metavar="HOST:PORT")
    add("--etcd", default=env("ETCD_ENDPOINTS", default=DEFAULT_ETCD), metavar="URL[,URL…]")
    add("--cluster", default=env("SESSIONMESH_CLUSTER", default=DEFAULT_CLUSTER))
    add("--storage", default=env("SESSION_STORAGE_PATH", default=DEFAULT_STORAGE), metavar="PATH")
    add(
        "--max-sessions",
        default=env("MAX_SESSIONS_PER_INSTANCE", default=str(DEFAULT_MAX_SESSIONS)),
        metavar="N",
    )
    # Not env(): an explicitly empty DATABASE_URL turns the accounts DB off.
    add("--database-url", default=environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    add(
        "--accounts-max-pending-sessions",
        default=env("ACCOUNTS_MAX_PENDING_SESSIONS", default=str(DEFAULT_MAX_PENDING_SESSIONS)),
        metavar="N",
    )
    add(
        "--driver",
        default=env("SESSION_DRIVER", default=SIM_DRIVER),
        help="sim (simnet) or whatsmeow (WhatsApp; the whatsapp extra)",
    )
    add("--simnet", default=env("SIMNET_ADDR", default=DEFAULT_SIMNET), metavar="HOST:PORT")
    add("--metrics-listen", default=env("METRICS_LISTEN"), metavar="HOST:PORT")
    add(
        "--lease-ttl-seconds",
        default=env("LEASE_TTL_SECONDS", default=str(DEFAULT_LEASE_TTL_SECONDS)),
    )
    add("--zone", default=env("NODE_ZONE"))
    add(
        "--restore-concurrency",
        default=env("RESTORE_CONCURRENCY", default=str(DEFAULT_RESTORE_CONCURRENCY)),
    )
    add(
        "--reconcile-interval-seconds",
        default=env("RECONCILE_INTERVAL_SECONDS", default=str(DEFAULT_RECONCILE_INTERVAL_SECONDS)),
    )
    add(
        "--max-moves-in-flight",
        default=env("MAX_MOVES_IN_FLIGHT", default=str(DEFAULT_MAX_MOVES_IN_FLIGHT)),
    )
    add(
        "--loop-stall-limit-seconds",
        default=env("LOOP_STALL_LIMIT_SECONDS", default=str(DEFAULT_LOOP_STALL_LIMIT_SECONDS)),
    )
    add("--max-in-flight", default=env("MAX_IN_FLIGHT", default=str(DEFAULT_MAX_IN_FLIGHT)))
    add(
        "--storage-timeout-seconds",
        default=env("STORAGE_TIMEOUT_SECONDS", default=str(DEFAULT_STORAGE_TIMEOUT_SECONDS)),
    )
    add(
        "--outbox-max-queued",
        default=env("OUTBOX_MAX_QUEUED", default=str(DEFAULT_OUTBOX_MAX_QUEUED)),
    )
    add(
        "--max-watchers-per-session",
        default=env("MAX_WATCHERS_PER_SESSION", default=str(DEFAULT_MAX_WATCHERS_PER_SESSION)),
    )
    add(
        "--shutdown-grace-seconds",
        default=env("SHUTDOWN_GRACE_SECONDS", default=str(DEFAULT_SHUTDOWN_GRACE_SECONDS)),
    )
    add_tls_flags(parser, environ)
    add_etcd_tls_flags(parser, environ)
    add_auth_flags(parser, environ)
    add(
        "--max-streams-per-connection",
        default=env("MAX_STREAMS_PER_CONNECTION", default=str(DEFAULT_NODE_STREAMS_PER_CONNECTION)),
    )
    add(
        "--max-message-bytes",
        default=env("MAX_MESSAGE_BYTES", default=str(DEFAULT_MAX_MESSAGE_BYTES)),
    )
    add(
        "--max-sessions-per-workspace",
        default=env("MAX_SESSIONS_PER_WORKSPACE", default=str(DEFAULT_MAX_SESSIONS_PER_WORKSPACE)),
    )
    add(
        "--sends-per-second-per-workspace",
        default=env(
            "SENDS_PER_SECOND_PER_WORKSPACE", default=f"{DEFAULT_SENDS_PER_SECOND_PER_WORKSPACE:g}"
        ),
    )
    add_webhook_flags(parser, environ)
    add(
        "--webhook-retry-schedule",
        default=env("WEBHOOK_RETRY_SCHEDULE", default=DEFAULT_SCHEDULE_TEXT),
        help="delays before each retry of a webhook delivery (default %(default)s)",
    )
    add(
        "--webhook-timeout-seconds",
        default=env("WEBHOOK_TIMEOUT_SECONDS", default=f"{DEFAULT_TIMEOUT_SECONDS:g}"),
    )
    add(
        "--webhook-max-concurrency",
        default=env("WEBHOOK_MAX_CONCURRENCY", default=str(DEFAULT_MAX_CONCURRENCY)),
    )
    add("--log-level", default=env("LOG_LEVEL", default="INFO"))
    add("--log-format", default=env("LOG_FORMAT", default="text"), help="text or json")
    return parser


def _config_from(args: argparse.Namespace) -> NodeConfig:
    node_id = validate_id(args.node_id or default_node_id(), field="--node-id")
    parse_host_port(args.listen, field="--listen")
    if args.advertise:
        parse_host_port(args.advertise, field="--advertise")
    if args.driver not in DRIVERS:
        raise InvalidInput(f"--driver {args.driver!r} is not one of {', '.join(DRIVERS)}")
    parse_host_port(args.simnet, field="--simnet")
    if args.metrics_listen:
        parse_host_port(args.metrics_listen, field="--metrics-listen")
    validate_id(args.cluster, field="--cluster")
    etcd_tls = etcd_tls_from_args(args)
    parse_endpoints(args.etcd, tls=etcd_tls)
    return NodeConfig(
        node_id=node_id,
        listen_address=args.listen,
        advertise_address=args.advertise,
        etcd_endpoints=args.etcd,
        cluster=args.cluster,
        storage_path=Path(args.storage),
        max_sessions=whole_number(args.max_sessions, field="--max-sessions", minimum=1),
        database_url=args.database_url,
        accounts_max_pending_sessions=whole_number(
            args.accounts_max_pending_sessions, field="--accounts-max-pending-sessions", minimum=1
        ),
        driver=args.driver,
        simnet_address=args.simnet,
        metrics_listen=args.metrics_listen,
        lease_ttl_seconds=whole_number(
            args.lease_ttl_seconds, field="--lease-ttl-seconds", minimum=MIN_LEASE_TTL_SECONDS
        ),
        zone=args.zone,
        restore_concurrency=whole_number(
            args.restore_concurrency, field="--restore-concurrency", minimum=1
        ),
        reconcile_interval_seconds=positive_seconds(
            args.reconcile_interval_seconds, field="--reconcile-interval-seconds"
        ),
        max_moves_in_flight=whole_number(
            args.max_moves_in_flight, field="--max-moves-in-flight", minimum=1
        ),
        loop_stall_limit_seconds=positive_seconds(
            args.loop_stall_limit_seconds, field="--loop-stall-limit-seconds"
        ),
        max_in_flight=whole_number(args.max_in_flight, field="--max-in-flight", minimum=1),
        storage_timeout_seconds=positive_seconds(
            args.storage_timeout_seconds, field="--storage-timeout-seconds"
        ),
        outbox_max_queued=whole_number(
            args.outbox_max_queued, field="--outbox-max-queued", minimum=1
        ),
        max_watchers_per_session=whole_number(
            args.max_watchers_per_session, field="--max-watchers-per-session", minimum=1
        ),
        shutdown_grace_seconds=positive_seconds(
            args.shutdown_grace_seconds, field="--shutdown-grace-seconds"
        ),
        tls=tls_from_args(args),
        etcd_tls=etcd_tls,
        auth=auth_from_args(args),
        max_message_bytes=whole_number(
            args.max_message_bytes, field="--max-message-bytes", minimum=MIN_MAX_MESSAGE_BYTES
        ),
        max_streams_per_connection=whole_number(
            args.max_streams_per_connection, field="--max-streams-per-connection", minimum=1
        ),
        max_sessions_per_workspace=whole_number(
            args.max_sessions_per_workspace, field="--max-sessions-per-workspace", minimum=0
        ),
        sends_per_second_per_workspace=_rate(args.sends_per_second_per_workspace),
        webhook_allow_private=allow_private_from_args(args),
        webhook_retry_schedule=parse_schedule(args.webhook_retry_schedule),
        webhook_timeout_seconds=positive_seconds(
            args.webhook_timeout_seconds, field="--webhook-timeout-seconds"
        ),
        webhook_max_concurrency=whole_number(
            args.webhook_max_concurrency, field="--webhook-max-concurrency", minimum=1
        ),
        log_level=parse_log_level(args.log_level),
        log_format=parse_log_format(args.log_format),
    )


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not rate >= 0 or rate == float("inf"):
        raise InvalidInput(f"--sends-per-second-per-workspace {value!r} is not a rate >= 0")
    return rate


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Build the config from ``argv`` (default: ``sys.argv[1:]``) and ``environ`` (default:
    ``os.environ``). A bad value exits with a message naming it and code 2."""
    return parse_flags(_build_parser, _config_from, argv, environ)
