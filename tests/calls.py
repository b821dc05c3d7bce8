"""Short forms of the SessionService calls many tests make: create a session, wait for a
state, and the error a call fails with."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from protos import session_pb2 as pb
from protos import session_pb2_grpc
from testkit import eventually

PHONE = "+14155550100"


async def error_of(call: Any) -> grpc.aio.AioRpcError:
    """The error ``call`` (awaitable) fails with; fails the test if it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def create(stub: session_pb2_grpc.SessionServiceStub, ws: str, sid: str) -> pb.Session:
    """CreateSession for ``ws/sid`` with :data:`PHONE`."""
    request = pb.CreateSessionRequest(workspace_id=ws, session_id=sid, phone_number=PHONE)
    return await stub.CreateSession(request, timeout=5)


async def wait_state(
    stub: session_pb2_grpc.SessionServiceStub, ws: str, sid: str, state: int
) -> pb.Session:
    """Poll GetSession until ``ws/sid`` is in ``state``; the session then."""

    async def reached() -> pb.Session | None:
        got = await stub.GetSession(pb.GetSessionRequest(workspace_id=ws, session_id=sid))
        return got if got.state == state else None

    result: pb.Session = await eventually(reached, message=f"{ws}/{sid} in state {state}")
    return result
