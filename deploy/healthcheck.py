#!/usr/bin/env python3
"""``sessionmesh-healthcheck ADDRESS [SERVICE]``: one ``grpc.health.v1`` check, mutual TLS aware.

The container image installs this file as ``/usr/local/bin/sessionmesh-healthcheck``; the
Kubernetes probes and the compose health checks run it. Kubernetes' own ``grpc:`` probe
speaks plaintext only, and a node given ``--tls-*`` opens no plaintext port and requires a
client certificate, so the probe has to be a client of the mesh's own: with
``SESSIONMESH_TLS_CERT``, ``SESSIONMESH_TLS_KEY`` and ``SESSIONMESH_TLS_CA`` set (the very
variables the process checked reads) it dials with that certificate, else in plaintext.

Exit codes: 0 SERVING; 1 anything else (NOT_SERVING, unknown service, unreachable, timeout);
2 bad usage. One line on stderr says why it was not 0. It imports nothing of sessionmesh, only
``grpcio`` and ``grpcio-health-checking``, so it runs wherever the product's dependencies do.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TLS_VARIABLES = ("SESSIONMESH_TLS_CERT", "SESSIONMESH_TLS_KEY", "SESSIONMESH_TLS_CA")
"""The mesh's TLS variables (``registry/tls.py``): certificate chain, key, CA."""
DEFAULT_TIMEOUT_SECONDS = 3.0
DEFAULT_SERVER_NAME = "localhost"
"""The name the server's certificate is checked against: a probe dials 127.0.0.1, and every
certificate ``deploy/certs.py`` issues names ``localhost``."""


def channel_credentials(environ: Mapping[str, str]) -> grpc.ChannelCredentials | None:
    """Mutual TLS credentials from the mesh's TLS variables, or None when none is set.

    ``ValueError`` when only some are set (as the servers refuse it) or a file is unreadable.
    """
    paths = [environ.get(name, "") for name in TLS_VARIABLES]
    if not any(paths):
        return None
    if not all(paths):
        missing = [name for name, path in zip(TLS_VARIABLES, paths, strict=True) if not path]
        raise ValueError(f"TLS needs all three variables; missing {', '.join(missing)}")
    try:
        certificate, key, ca = (Path(path).read_bytes() for path in paths)
    except OSError as error:
        raise ValueError(f"{error.filename}: {error.strerror}") from None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=certificate
    )


def check(
    address: str,
    *,
    service: str = "",
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str = DEFAULT_SERVER_NAME,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> str:
    """The status ``address`` reports for ``service`` (``SERVING``, ``NOT_SERVING``, …);
    ``grpc.RpcError`` when the call itself fails."""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", server_name)]
        )
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_seconds
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one check; the exit code (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="sessionmesh-healthcheck", description="One grpc.health.v1 check."
    )
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help="service name ('' = the server)")
    parser.add_argument("--timeout-seconds", type=float, default=DEFAULT_TIMEOUT_SECONDS)
    parser.add_argument(
        "--server-name",
        default=DEFAULT_SERVER_NAME,
        help="the name the server's certificate must hold (with TLS)",
    )
    args = parser.parse_args(argv)
    try:
        credentials = channel_credentials(os.environ if environ is None else environ)
    except ValueError as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return 2
    try:
        status = check(
            args.address,
            service=args.service,
            credentials=credentials,
            server_name=args.server_name,
            timeout_seconds=args.timeout_seconds,
        )
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        print(f"healthcheck: {args.address} {args.service!r}: {code}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"healthcheck: {args.address} {args.service!r}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
