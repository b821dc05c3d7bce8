"""TLS to etcd with a client certificate: ``--etcd-cacert``, ``--etcd-cert``, ``--etcd-key``
(or etcdctl's own ``ETCDCTL_CACERT``, ``ETCDCTL_CERT``, ``ETCDCTL_KEY``, so one environment
serves both).

With them, every etcd endpoint must be ``https://`` or bare ``host:port``: a process given
etcd TLS never falls back to a plaintext etcd connection. etcd started with
``--client-cert-auth`` takes the certificate's common name as the user, whose role should
allow the cluster's key prefix only (``python -m deploy.etcd_access``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from registry.errors import InvalidInput
from registry.flags import first_set

ETCD_CACERT_VARIABLE = "ETCDCTL_CACERT"
ETCD_CERT_VARIABLE = "ETCDCTL_CERT"
ETCD_KEY_VARIABLE = "ETCDCTL_KEY"


@dataclass(frozen=True)
class EtcdTls:
    """The CA that signed etcd's certificate, and this process's client certificate."""

    ca: bytes = field(repr=False)
    certificate: bytes = field(repr=False)
    key: bytes = field(repr=False)

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials: etcd checked against ``ca``, this process's certificate sent."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.certificate
        )


def _read(flag: str, value: str) -> bytes:
    try:
        return Path(value).read_bytes()
    except OSError as error:
        raise InvalidInput(f"{flag} {value}: {error.strerror}") from None


def load_etcd_tls(cacert: str, cert: str, key: str) -> EtcdTls | None:
    """The files named (all three, or none: None); ``InvalidInput`` naming what is missing or
    unreadable (never a file's contents)."""
    given = {"--etcd-cacert": cacert, "--etcd-cert": cert, "--etcd-key": key}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise InvalidInput(f"etcd TLS needs all three of its flags: missing {', '.join(missing)}")
    tls = EtcdTls(
        ca=_read("--etcd-cacert", cacert),
        certificate=_read("--etcd-cert", cert),
        key=_read("--etcd-key", key),
    )
    if b"-----BEGIN" not in tls.ca or b"-----BEGIN" not in tls.certificate:
        raise InvalidInput("--etcd-cacert and --etcd-cert must be PEM certificates")
    if b"PRIVATE KEY-----" not in tls.key:
        raise InvalidInput("--etcd-key must be a PEM private key")
    return tls


def add_etcd_tls_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """``--etcd-cacert``, ``--etcd-cert``, ``--etcd-key`` with etcdctl's variables."""
    for flag, variable, what in (
        ("--etcd-cacert", ETCD_CACERT_VARIABLE, "the CA etcd's certificate is checked against"),
        ("--etcd-cert", ETCD_CERT_VARIABLE, "this process's client certificate for etcd"),
        ("--etcd-key", ETCD_KEY_VARIABLE, "its private key"),
    ):
        parser.add_argument(
            flag, default=first_set(environ, variable), help=f"{what} (env {variable})"
        )


def etcd_tls_from_args(args: argparse.Namespace) -> EtcdTls | None:
    """The etcd TLS the flags name."""
    return load_etcd_tls(args.etcd_cacert, args.etcd_cert, args.etcd_key)
