"""Following a long move with a progress bar: ``meshctl drain --wait`` and ``migrate --wait``.

Both poll the gateway's AdminService (the moves themselves are the node reconcilers' work)
and draw on stderr, so stdout keeps only the command's answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from protos import admin_pb2, admin_pb2_grpc

CALL_TIMEOUT_SECONDS = 10.0
"""Deadline of one admin call."""
POLL_INTERVAL_SECONDS = 0.2
"""How often a wait asks the gateway again."""

_err = Console(stderr=True)


def locate(stub: admin_pb2_grpc.AdminServiceStub, workspace_id: str) -> Any:
    """The LocateWorkspace answer for ``workspace_id`` (awaitable)."""
    request = admin_pb2.LocateWorkspaceRequest(workspace_id=workspace_id)
    return stub.LocateWorkspace(request, timeout=CALL_TIMEOUT_SECONDS)


async def wait_for_drain(
    stub: admin_pb2_grpc.AdminServiceStub, node_id: str, *, start_count: int, timeout_seconds: float
) -> None:
    """Poll ListNodes until ``node_id`` owns no slot (or is gone); TimeoutError after
    ``timeout_seconds``."""
    deadline = time.monotonic() + timeout_seconds
    with Progress(
        SpinnerColumn(),
        TextColumn("draining {task.fields[node]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("slots handed off"),
        console=_err,
        transient=False,
    ) as progress:
        task = progress.add_task("drain", total=max(start_count, 1), node=node_id)
        while True:
            reply = await stub.ListNodes(admin_pb2.ListNodesRequest(), timeout=CALL_TIMEOUT_SECONDS)
            owned = next((n.owned_slot_count for n in reply.nodes if n.node_id == node_id), 0)
            progress.update(task, completed=max(start_count - owned, 0) if start_count else 1)
            if owned == 0:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"node {node_id} still owns {owned} slots after {timeout_seconds:g}s"
                )
            await asyncio.sleep(POLL_INTERVAL_SECONDS)


async def wait_for_owner(
    stub: admin_pb2_grpc.AdminServiceStub,
    workspace_id: str,
    *,
    node_id: str,
    timeout_seconds: float,
) -> None:
    """Poll LocateWorkspace until ``node_id`` holds the pinned workspace; TimeoutError after
    ``timeout_seconds``."""
    deadline = time.monotonic() + timeout_seconds
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=_err, transient=False
    ) as progress:
        task = progress.add_task(f"moving {workspace_id} to {node_id}")
        while True:
            reply = await locate(stub, workspace_id)
            if reply.pinned_owner_node_id == node_id:
                progress.update(task, description=f"{workspace_id} is on {node_id}")
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{workspace_id} is not owned by {node_id} after {timeout_seconds:g}s"
                )
            await asyncio.sleep(POLL_INTERVAL_SECONDS)
