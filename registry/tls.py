"""TLS for the mesh's own gRPC: the files a process is given, and the credentials made of them.

Every server and client takes ``--tls-cert``, ``--tls-key`` and ``--tls-ca`` (or
``SESSIONMESH_TLS_CERT``, ``SESSIONMESH_TLS_KEY``, ``SESSIONMESH_TLS_CA``): all three or none.
With them:

- a node serves TLS only and **requires** a client certificate signed by the mesh CA (mutual
  TLS: only the gateway, proxyless clients and operators holding a mesh certificate reach it);
- the gateway serves TLS only on its public listener (a client certificate is asked for but
  not required there) and dials nodes with its own certificate;
- the proxyless client and ``meshctl`` dial with theirs.

A process with TLS configured opens no plaintext port. Without the flags everything is
plaintext, as before (tokens, not TLS, are what "secure by default" turns on).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from registry.errors import InvalidInput
from registry.flags import first_set

TLS_CERT_VARIABLE = "SESSIONMESH_TLS_CERT"
TLS_KEY_VARIABLE = "SESSIONMESH_TLS_KEY"
TLS_CA_VARIABLE = "SESSIONMESH_TLS_CA"


@dataclass(frozen=True)
class TlsMaterial:
    """A process's certificate chain and key, and the CA its peers' certificates are checked
    against (PEM bytes, read once at start)."""

    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes
    files: tuple[str, ...] = ()
    """Where they were read from (certificate, key, CA), for servers that take paths (the
    metrics endpoint); empty when built from bytes."""

    def __repr__(self) -> str:  # never the key, in a log line or a traceback
        return "TlsMaterial(<certificate, key and CA>)"

    def server_credentials(self, *, require_client_certificate: bool) -> grpc.ServerCredentials:
        """Credentials for a server port; with ``require_client_certificate`` a caller
        without a certificate from the CA is refused during the handshake."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=require_client_certificate,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a channel: the server checked against the CA, this process's own
        certificate presented (mutual TLS)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def load_tls(cert: str, key: str, ca: str) -> TlsMaterial | None:
    """The material in these files, or None when none is given. ``InvalidInput`` names what
    is missing or unreadable (one or two of the three given is a mistake, never plaintext)."""
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return None
    missing = [flag for flag, path in given.items() if not path]
    if missing:
        raise InvalidInput(
            f"TLS needs --tls-cert, --tls-key and --tls-ca together; missing {', '.join(missing)}"
        )
    contents: dict[str, bytes] = {}
    for flag, path in given.items():
        try:
            contents[flag] = Path(path).read_bytes()
        except OSError as error:
            raise InvalidInput(f"{flag} {path}: {error.strerror or error}") from None
        if b"-----BEGIN " not in contents[flag]:
            raise InvalidInput(f"{flag} {path}: not a PEM file")
    return TlsMaterial(
        certificate_chain=contents["--tls-cert"],
        private_key=contents["--tls-key"],
        root_certificates=contents["--tls-ca"],
        files=(cert, key, ca),
    )


def add_tls_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-ca`` with their environment fallbacks."""
    parser.add_argument(
        "--tls-cert",
        default=first_set(environ, TLS_CERT_VARIABLE),
        metavar="PEM",
        help=f"this process's certificate chain (env {TLS_CERT_VARIABLE})",
    )
    parser.add_argument(
        "--tls-key",
        default=first_set(environ, TLS_KEY_VARIABLE),
        metavar="PEM",
        help=f"its private key (env {TLS_KEY_VARIABLE})",
    )
    parser.add_argument(
        "--tls-ca",
        default=first_set(environ, TLS_CA_VARIABLE),
        metavar="PEM",
        help=f"the mesh CA peers are checked against (env {TLS_CA_VARIABLE})",
    )


def tls_from_args(args: argparse.Namespace) -> TlsMaterial | None:
    """The material named by the parsed TLS flags (see :func:`load_tls`)."""
    return load_tls(args.tls_cert, args.tls_key, args.tls_ca)
