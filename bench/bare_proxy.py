"""The floor of a Python gRPC hop: a bare ``grpc.aio`` forwarder with nothing of the gateway
(no routing, no metadata handling, no tracing, no metrics, no retries), used by scenario 1 as
a second baseline, so that the gateway's added latency can be read against what any
``grpc.aio`` proxy costs on the same machine in the same run.

::

    .venv/bin/python -m bench.bare_proxy --listen 127.0.0.1:7300 --target 127.0.0.1:7001
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    _GenericRpcHandler = grpc.GenericRpcHandler[bytes, bytes]
else:  # grpc's runtime class is not generic; only its stubs are
    _GenericRpcHandler = grpc.GenericRpcHandler


def _identity(data: bytes) -> bytes:
    return data


class _Forward(_GenericRpcHandler):
    """Every unary method, forwarded as raw bytes to one target."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        path = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is None:
            caller = self._channel.unary_unary(
                path, request_serializer=_identity, response_deserializer=_identity
            )

            async def forward(request: bytes, context: Any) -> bytes:
                response: bytes = await caller(request, timeout=context.time_remaining())
                return response

            handler = self._handlers[path] = grpc.unary_unary_rpc_method_handler(forward)
        return handler


async def serve(listen: str, target: str) -> None:
    """Forward every unary call on ``listen`` to ``target`` until cancelled."""
    async with grpc.aio.insecure_channel(target) as channel:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_Forward(channel),))
        server.add_insecure_port(listen)
        await server.start()
        try:
            await server.wait_for_termination()
        finally:
            await server.stop(None)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m bench.bare_proxy``."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_proxy", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port to serve on")
    parser.add_argument("--target", required=True, help="host:port of the node")
    arguments = parser.parse_args(argv)
    asyncio.run(serve(arguments.listen, arguments.target))


if __name__ == "__main__":
    main()
