"""``meshctl prometheus-targets``: the Prometheus scrape targets of a cluster, as a file_sd file
(a command of :mod:`client.meshctl`'s app).

Nodes publish their metrics address in their membership record in etcd
(``NodeRecord.metrics_address``), so the nodes' targets come from etcd, as the live set is
now; the gateway registers nowhere, so its metrics addresses are given with ``--gateway``.
Prometheus re-reads a file_sd file whenever it changes: the file is replaced atomically, so it
never reads half of one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import aetcd
import typer

from client.meshctl_app import app, err, fail, out
from client.meshctl_etcd import (
    DEFAULT_ETCD,
    ClusterOption,
    EtcdCacertOption,
    EtcdCertOption,
    EtcdKeyOption,
    EtcdOption,
    etcd_tls,
)
from registry import (
    DEFAULT_CLUSTER,
    ClusterKeys,
    EtcdTls,
    InvalidInput,
    MeshError,
    NodeRecord,
    Unavailable,
    connect_etcd,
    parse_host_port,
)

SCHEMES = ("http", "https")
UNSPECIFIED_HOSTS = frozenset({"", "0.0.0.0", "::"})
"""Hosts a process listens on to mean "every interface": nobody can dial them."""


def _dialable(metrics_address: str, grpc_address: str) -> str:
    """``metrics_address`` with an every-interface host replaced by the host of the node's
    gRPC address (the one others dial)."""
    host, port = parse_host_port(metrics_address, field="metrics address", allow_empty_host=True)
    if host in UNSPECIFIED_HOSTS:
        host, _grpc_port = parse_host_port(grpc_address, field="node address")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def file_sd_groups(
    records: Iterable[NodeRecord], *, cluster: str, gateways: Iterable[str], scheme: str = "http"
) -> list[dict[str, Any]]:
    """The file_sd target groups: one per node with a metrics address (by node id), then one
    per gateway address, each labelled with its ``role``, ``member`` and ``cluster`` (and
    ``zone`` when the node has one). ``member``, not ``node_id``: a target label named like a
    label of the scraped series would rename the series' own to ``exported_node_id``."""
    groups: list[dict[str, Any]] = []
    common: dict[str, str] = {"cluster": cluster}
    if scheme != "http":
        common["__scheme__"] = scheme
    for record in sorted(records, key=lambda record: record.node_id):
        if not record.metrics_address:
            continue
        labels = {**common, "role": "node", "member": record.node_id}
        if record.zone:
            labels["zone"] = record.zone
        target = _dialable(record.metrics_address, record.address)
        groups.append({"targets": [target], "labels": labels})
    for address in gateways:
        labels = {**common, "role": "gateway", "member": f"gateway@{address}"}
        groups.append({"targets": [address], "labels": labels})
    return groups


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, flushed and
    renamed over it: a reader sees the old file or the new one, never a part."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file 0600; Prometheus often runs as a user of its own.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


async def _node_records(endpoints: str, keys: ClusterKeys, tls: EtcdTls | None) -> list[NodeRecord]:
    """The membership records etcd holds now: the live nodes."""
    etcd = await connect_etcd(endpoints, tls=tls)
    try:
        items = await etcd.get_prefix(keys.nodes_prefix)
    except aetcd.ClientError as error:
        raise Unavailable(f"cannot read the members from etcd: {error}") from error
    finally:
        await etcd.close()
    return [NodeRecord.from_json(item.value) for item in items]


def _gateway_targets(values: list[str] | None) -> list[str]:
    for value in values or []:
        try:
            parse_host_port(value, field="--gateway", allow_port_zero=False)
        except InvalidInput:
            raise typer.BadParameter(f"{value!r} is not HOST:PORT") from None
    return values or []


def _scheme(value: str) -> str:
    if value not in SCHEMES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(SCHEMES)}")
    return value


@app.command("prometheus-targets")
def prometheus_targets(
    *,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the file_sd JSON to this file (atomically); without it, print it.",
            show_default=False,
        ),
    ] = None,
    gateways: Annotated[
        list[str] | None,
        typer.Option(
            "--gateway",
            callback=_gateway_targets,
            help="A gateway's METRICS HOST:PORT (--metrics-listen), repeatable: gateways are "
            "not in etcd.",
            show_default=False,
        ),
    ] = None,
    etcd: EtcdOption = DEFAULT_ETCD,
    cluster: ClusterOption = DEFAULT_CLUSTER,
    scheme: Annotated[
        str,
        typer.Option(
            "--scheme", callback=_scheme, help="https when the processes serve TLS (http, https)."
        ),
    ] = "http",
    etcd_cacert: EtcdCacertOption = "",
    etcd_cert: EtcdCertOption = "",
    etcd_key: EtcdKeyOption = "",
) -> None:
    """Write the Prometheus file_sd targets of the live nodes (from etcd) and the gateways."""
    tls = etcd_tls(etcd_cacert, etcd_cert, etcd_key)
    try:
        records = asyncio.run(_node_records(etcd, ClusterKeys(cluster), tls))
    except MeshError as error:
        fail(error.message)
    silent = sorted(record.node_id for record in records if not record.metrics_address)
    groups = file_sd_groups(records, cluster=cluster, gateways=gateways or [], scheme=scheme)
    text = json.dumps(groups, indent=2, sort_keys=True) + "\n"
    if silent:
        err.print(
            f"no metrics address (started without --metrics-listen): {', '.join(silent)}",
            highlight=False,
        )
    if out_file is None:
        sys.stdout.write(text)
        return
    try:
        write_atomically(out_file, text)
    except OSError as error:
        fail(f"cannot write {out_file}: {error.strerror}")
    out.print(f"wrote {len(groups)} targets to {out_file}", highlight=False)
