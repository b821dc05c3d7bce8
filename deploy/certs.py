"""``make certs`` / ``python -m deploy.certs``: a local CA and the certificates of a dev mesh.

Writes into ``--out`` (default ``.mesh/certs``)::

    ca.pem, ca-key.pem            the mesh CA (keep ca-key.pem away from the nodes)
    node.pem, node-key.pem        for nodes: a server and a client certificate in one
    gateway.pem, gateway-key.pem  for the gateway: it serves callers and dials nodes
    client.pem, client-key.pem    for the proxyless client and meshctl
    etcd.pem, etcd-key.pem        for etcd's own listeners (client and peer)
    etcd-root.pem, …-key.pem      etcd's ``root`` user: sets up its users and roles

Common names are ``sessionmesh-<role>`` (``root`` for etcd-root): etcd started with
``--client-cert-auth`` takes them as its user names.

Every certificate names ``localhost``, ``127.0.0.1`` and ``::1`` and each ``--host`` given
(the names or addresses nodes advertise), with ECDSA P-256 keys; keys are written readable
by their owner only. Existing files are kept unless ``--force``. For production, issue
certificates from your own CA with the hostnames your nodes advertise: this is for a dev mesh
and for the tests.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_OUT = Path(".mesh/certs")
DEFAULT_DAYS = 365
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_ROLES = {
    "node": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "gateway": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "etcd": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "etcd-root": (ExtendedKeyUsageOID.CLIENT_AUTH,),
}
_COMMON_NAMES = {"etcd-root": "root"}
"""etcd takes a client certificate's common name as its user: ``root`` may set up etcd's
users and roles (``python -m deploy.etcd_access``); the others are ``sessionmesh-<role>``."""


def common_name(role: str) -> str:
    """The common name of ``role``'s certificate (etcd's user name for it)."""
    return _COMMON_NAMES.get(role, f"sessionmesh-{role}")


@dataclass(frozen=True)
class IssuedFiles:
    """Where the certificates were written."""

    folder: Path

    def certificate(self, role: str) -> Path:
        """``<role>.pem`` (``ca``, ``node``, ``gateway``, ``client``)."""
        return self.folder / f"{role}.pem"

    def key(self, role: str) -> Path:
        """``<role>-key.pem``."""
        return self.folder / f"{role}-key.pem"

    def flags(self, role: str) -> list[str]:
        """``--tls-cert … --tls-key … --tls-ca …`` for a process of ``role``."""
        return [
            "--tls-cert", str(self.certificate(role)),
            "--tls-key", str(self.key(role)),
            "--tls-ca", str(self.certificate("ca")),
        ]  # fmt: skip

    def etcd_flags(self, role: str) -> list[str]:
        """``--etcd-cacert … --etcd-cert … --etcd-key …``: ``role``'s certificate for etcd."""
        return [
            "--etcd-cacert", str(self.certificate("ca")),
            "--etcd-cert", str(self.certificate(role)),
            "--etcd-key", str(self.key(role)),
        ]  # fmt: skip


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sessionmesh dev mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alternative_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys((*_LOCAL_NAMES, *hosts)):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def issue(
    folder: Path, *, hosts: Sequence[str] = (), days: int = DEFAULT_DAYS, force: bool = False
) -> IssuedFiles:
    """Write a CA and the node, gateway, client, etcd and etcd-root certificates into
    ``folder`` (kept if they are all there, unless ``force``); where they are."""
    files = IssuedFiles(folder)
    if not force and all(files.certificate(role).exists() for role in ("ca", *_ROLES)):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("sessionmesh dev CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(files.key("ca"), ca_key)
    files.certificate("ca").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usages in _ROLES.items():
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name(role)))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(_alternative_names(hosts), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(files.key(role), key)
        files.certificate(role).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return files


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m deploy.certs [--out DIR] [--host NAME …] [--days N] [--force]``."""
    parser = argparse.ArgumentParser(prog="python -m deploy.certs", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--host", action="append", default=[], help="another name or address")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--force", action="store_true", help="replace existing files")
    arguments = parser.parse_args(argv)
    files = issue(arguments.out, hosts=arguments.host, days=arguments.days, force=arguments.force)
    print(f"certificates in {files.folder}:")
    for role in ("node", "gateway", "client"):
        print(f"  {role:<8} {' '.join(files.flags(role))}")
    for role in ("node", "gateway"):
        print(f"  {role:<8} {' '.join(files.etcd_flags(role))}")
    print(f"  etcd     --cert-file {files.certificate('etcd')} --key-file {files.key('etcd')}")
    print(f"           --trusted-ca-file {files.certificate('ca')} --client-cert-auth")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
