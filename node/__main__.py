"""``sessionmesh-node`` / ``python -m node``: run one node until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import replace

import structlog

from node.config import NodeConfig, load_config
from node.startup import start_node
from registry import MeshError
from telemetry import (
    configure_logging,
    configure_tracing,
    raise_open_file_limit,
    start_metrics_server,
)

_log = structlog.get_logger("node")


async def _serve(config: NodeConfig) -> None:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    node = await start_node(config)
    _log.info("node_listening", node_id=node.node_id, address=node.address)
    terminated = asyncio.create_task(node.wait_for_termination())
    stop_wait = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({terminated, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    await node.stop(grace_seconds=config.shutdown_grace_seconds)
    await terminated
    _log.info("node_exited", node_id=node.node_id)


def main() -> None:
    """Entry point: configure logging, tracing and metrics, then serve until a signal."""
    config = load_config()
    configure_logging("sessionmesh-node", level=config.log_level, log_format=config.log_format)
    configure_tracing("sessionmesh-node")
    raise_open_file_limit()
    metrics_address = start_metrics_server(config.metrics_listen, tls=config.tls)
    # The bound address (port 0 resolved) is what the node record publishes.
    try:
        asyncio.run(_serve(replace(config, metrics_listen=metrics_address)))
    except MeshError as error:
        # e.g. etcd unreachable or the port taken: one clear line, not a traceback.
        _log.error("node_start_failed", node_id=config.node_id, reason=error.message)
        sys.exit(1)


if __name__ == "__main__":
    main()
