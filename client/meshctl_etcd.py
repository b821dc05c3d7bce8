"""The options of the ``meshctl`` commands that read etcd themselves rather than ask the
gateway (``prometheus-targets``, ``backup``, ``restore``): where etcd is, the cluster, and
etcd's TLS, under the same variables the node and the gateway read."""

from __future__ import annotations

from typing import Annotated

import typer

from registry import (
    ETCD_CACERT_VARIABLE,
    ETCD_CERT_VARIABLE,
    ETCD_KEY_VARIABLE,
    EtcdTls,
    InvalidInput,
    load_etcd_tls,
)

DEFAULT_ETCD = "http://127.0.0.1:2379"

EtcdOption = Annotated[
    str, typer.Option("--etcd", envvar="ETCD_ENDPOINTS", help="etcd URL[,URL…].")
]
ClusterOption = Annotated[
    str, typer.Option("--cluster", envvar="SESSIONMESH_CLUSTER", help="The cluster's name.")
]
EtcdCacertOption = Annotated[
    str, typer.Option("--etcd-cacert", envvar=ETCD_CACERT_VARIABLE, help="etcd's CA (PEM).")
]
EtcdCertOption = Annotated[
    str, typer.Option("--etcd-cert", envvar=ETCD_CERT_VARIABLE, help="Client cert for etcd.")
]
EtcdKeyOption = Annotated[
    str, typer.Option("--etcd-key", envvar=ETCD_KEY_VARIABLE, help="Its private key.")
]

__all__ = [
    "DEFAULT_ETCD",
    "ClusterOption",
    "EtcdCacertOption",
    "EtcdCertOption",
    "EtcdKeyOption",
    "EtcdOption",
    "etcd_tls",
]


def etcd_tls(cacert: str, cert: str, key: str) -> EtcdTls | None:
    """etcd's TLS from the three options (None: plaintext); a usage error if they are wrong."""
    try:
        return load_etcd_tls(cacert, cert, key)
    except InvalidInput as error:
        raise typer.BadParameter(error.message) from None
