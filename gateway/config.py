"""The gateway's configuration: one frozen dataclass, built from flags and environment.

Flags win over environment variables, which win over defaults. A bad value ends the process
with a message naming it and exit code 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from registry import (
    DEFAULT_CLUSTER,
    DEFAULT_GATEWAY_STREAMS_PER_CONNECTION,
    DEFAULT_MAX_MESSAGE_BYTES,
    MIN_MAX_MESSAGE_BYTES,
    EtcdTls,
    InvalidInput,
    TlsMaterial,
    add_etcd_tls_flags,
    add_tls_flags,
    etcd_tls_from_args,
    parse_endpoints,
    parse_flags,
    parse_host_port,
    parse_log_format,
    parse_log_level,
    tls_from_args,
    whole_number,
)
from registry.auth import (
    TOKENS_REQUIRED,
    AuthSettings,
    add_auth_flags,
    auth_from_args,
)
from registry.webhooks import add_webhook_flags, allow_private_from_args

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:7000"
DEFAULT_ETCD_ENDPOINTS = "http://127.0.0.1:2379"


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway process needs to start."""

    listen_address: str = DEFAULT_LISTEN_ADDRESS
    """host:port the gRPC server binds (port 0 = any free port)."""
    etcd_endpoints: str = DEFAULT_ETCD_ENDPOINTS
    """Comma-separated etcd URLs; the first reachable one is used."""
    cluster: str = DEFAULT_CLUSTER
    """Name of the cluster whose nodes the gateway routes to."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint; empty = no endpoint."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_streams_per_connection: int = DEFAULT_GATEWAY_STREAMS_PER_CONNECTION
    """Calls one client connection may have open at once (HTTP/2's concurrent streams)."""
    """The largest request accepted and forwarded; past it gRPC answers RESOURCE_EXHAUSTED."""
    tls: TlsMaterial | None = None
    """Serve TLS only (a client certificate optional) and dial nodes with this certificate
    (mutual TLS); None: plaintext both ways."""
    etcd_tls: EtcdTls | None = None
    """TLS to etcd with this client certificate (``--etcd-cacert``…); None: plaintext."""
    auth: AuthSettings = TOKENS_REQUIRED
    webhook_allow_private: bool = False
    """Whether the default webhook may point at loopback, link-local and private addresses."""
    """Whether calls need bearer tokens (the default), and the bootstrap admin token."""
    log_level: str = "INFO"
    """Root log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)."""
    log_format: str = "text"
    """``text`` (key=value lines) or ``json`` (one object per line)."""


def _build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionmesh-gateway",
        description="Forward sessionmesh calls to the node that owns each workspace.",
    )
    parser.add_argument(
        "--listen",
        default=environ.get("GATEWAY_LISTEN", DEFAULT_LISTEN_ADDRESS),
        help="host:port to serve gRPC on (env GATEWAY_LISTEN; default %(default)s)",
    )
    parser.add_argument(
        "--etcd",
        default=environ.get("ETCD_ENDPOINTS", DEFAULT_ETCD_ENDPOINTS),
        help="comma-separated etcd URLs (env ETCD_ENDPOINTS; default %(default)s)",
    )
    parser.add_argument(
        "--cluster",
        default=environ.get("SESSIONMESH_CLUSTER", DEFAULT_CLUSTER),
        help="cluster name (env SESSIONMESH_CLUSTER; default %(default)s)",
    )
    parser.add_argument(
        "--metrics-listen",
        default=environ.get("METRICS_LISTEN", ""),
        help="host:port for Prometheus metrics (env METRICS_LISTEN; default off)",
    )
    add_tls_flags(parser, environ)
    add_etcd_tls_flags(parser, environ)
    add_auth_flags(parser, environ)
    add_webhook_flags(parser, environ)
    parser.add_argument(
        "--max-streams-per-connection",
        default=environ.get(
            "MAX_STREAMS_PER_CONNECTION", str(DEFAULT_GATEWAY_STREAMS_PER_CONNECTION)
        ),
        help="calls one connection may have open at once (env MAX_STREAMS_PER_CONNECTION; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--max-message-bytes",
        default=environ.get("MAX_MESSAGE_BYTES", str(DEFAULT_MAX_MESSAGE_BYTES)),
        help="the largest request accepted (env MAX_MESSAGE_BYTES; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=environ.get("LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (env LOG_LEVEL; default %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default=environ.get("LOG_FORMAT", "text"),
        help="text or json (env LOG_FORMAT; default %(default)s)",
    )
    return parser


def _config_from(args: argparse.Namespace) -> GatewayConfig:
    parse_host_port(args.listen, field="--listen", allow_empty_host=True)
    if args.metrics_listen:
        parse_host_port(args.metrics_listen, field="--metrics-listen", allow_empty_host=True)
    etcd_tls = etcd_tls_from_args(args)
    parse_endpoints(args.etcd, tls=etcd_tls)
    if not args.cluster or "/" in args.cluster:
        raise InvalidInput(f"--cluster {args.cluster!r} must be non-empty and contain no '/'")
    return GatewayConfig(
        listen_address=args.listen,
        etcd_endpoints=args.etcd,
        cluster=args.cluster,
        metrics_listen=args.metrics_listen,
        tls=tls_from_args(args),
        etcd_tls=etcd_tls,
        auth=auth_from_args(args),
        webhook_allow_private=allow_private_from_args(args),
        max_message_bytes=whole_number(
            args.max_message_bytes, field="--max-message-bytes", minimum=MIN_MAX_MESSAGE_BYTES
        ),
        max_streams_per_connection=whole_number(
            args.max_streams_per_connection, field="--max-streams-per-connection", minimum=1
        ),
        log_level=parse_log_level(args.log_level),
        log_format=parse_log_format(args.log_format),
    )


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """The configuration from ``argv`` (default ``sys.argv[1:]``) and ``environ`` (default
    ``os.environ``). A bad value exits with a message naming it and code 2."""
    return parse_flags(_build_parser, _config_from, argv, environ)
