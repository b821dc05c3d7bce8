"""``python -m deploy.etcd_access``: give a cluster's processes an etcd role limited to the
cluster's key prefix, and turn etcd's authentication on.

Run once per cluster, as etcd's ``root`` (with ``--client-cert-auth`` etcd takes the client
certificate's common name as the user: ``make certs`` issues ``etcd-root.pem`` for ``root``)::

    python -m deploy.etcd_access --etcd https://etcd-1:2379 --cluster default \\
        --user sessionmesh-node --user sessionmesh-gateway \\
        --etcd-cacert ca.pem --etcd-cert etcd-root.pem --etcd-key etcd-root-key.pem

It creates the role ``sessionmesh-<cluster>`` with read and write on
``/sessionmesh/<cluster>/`` and nothing else, a password-less user per ``--user`` (certificate
authentication only) holding that role, the ``root`` user with etcd's ``root`` role, and then
enables authentication. Each step that was done before is skipped, so it can be run again
(to add a user, say). From then on a certificate whose user has no role can read and write
nothing, and the mesh's users nothing outside their cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import grpc
from aetcd import rpc

from registry import (
    ClusterKeys,
    EtcdClient,
    EtcdTls,
    add_etcd_tls_flags,
    connect_etcd,
    etcd_tls_from_args,
)

ROOT = "root"


def role_name(cluster: str) -> str:
    """The role of a cluster's processes."""
    return f"sessionmesh-{cluster}"


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (etcd's range end)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


async def _unless_exists(call: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``call``; False if etcd answered that it was done already."""
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION and "already exist" in (
            error.details() or ""
        ):
            return False
        raise
    return True


async def restrict_to_cluster(
    client: EtcdClient, *, cluster: str, users: Sequence[str], enable: bool = True
) -> list[str]:
    """Set up the role, users and ``root`` as the module docstring says; what was done."""
    auth = rpc.AuthStub(client.channel)
    role = role_name(cluster)
    prefix = ClusterKeys(cluster).root
    timeout = 10.0
    done: list[str] = []
    if await _unless_exists(
        lambda: auth.RoleAdd(rpc.AuthRoleAddRequest(name=role), timeout=timeout)
    ):
        done.append(f"role {role}")
    await auth.RoleGrantPermission(
        rpc.AuthRoleGrantPermissionRequest(
            name=role,
            perm=rpc.Permission(
                permType=rpc.Permission.READWRITE, key=prefix, range_end=_prefix_end(prefix)
            ),
        ),
        timeout=timeout,
    )
    for user in (*users, ROOT):
        request = rpc.AuthUserAddRequest(name=user, options=rpc.UserAddOptions(no_password=True))
        if await _unless_exists(partial(auth.UserAdd, request, timeout=timeout)):
            done.append(f"user {user}")
        await auth.UserGrantRole(
            rpc.AuthUserGrantRoleRequest(user=user, role=ROOT if user == ROOT else role),
            timeout=timeout,
        )
    if enable:
        status = await auth.AuthStatus(rpc.AuthStatusRequest(), timeout=timeout)
        if not status.enabled:
            await auth.AuthEnable(rpc.AuthEnableRequest(), timeout=timeout)
            done.append("authentication enabled")
    return done


async def _run(endpoints: str, tls: EtcdTls | None, cluster: str, users: list[str]) -> None:
    client = await connect_etcd(endpoints, tls=tls)
    try:
        done = await restrict_to_cluster(client, cluster=cluster, users=users)
    finally:
        await client.close()
    for step in done or ["nothing to do: already set up"]:
        print(step)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m deploy.etcd_access", description=__doc__)
    parser.add_argument("--etcd", required=True, help="comma-separated etcd URLs")
    parser.add_argument("--cluster", default="default")
    parser.add_argument(
        "--user", action="append", required=True, help="a certificate's common name"
    )
    add_etcd_tls_flags(parser, os.environ)
    arguments = parser.parse_args(argv)
    try:
        tls = etcd_tls_from_args(arguments)
        asyncio.run(_run(arguments.etcd, tls, arguments.cluster, arguments.user))
    except grpc.aio.AioRpcError as error:
        sys.exit(f"etcd refused: {error.code().name}: {error.details()}")
    except Exception as error:  # a clear line, not a traceback, for an operator's mistake
        sys.exit(f"etcd_access: {error}")


if __name__ == "__main__":
    main()
