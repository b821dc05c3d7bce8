"""``sessionmesh-node`` / ``python -m node``: run one node until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys
from dataclasses import replace

from node.config import NodeConfig, load_config
from node.server import start_node
from registry.errors import MeshError
from telemetry.logging import configure_logging
from telemetry.metrics import start_metrics_server
from telemetry.tracing import configure_tracing

_log = logging.getLogger("node")


def _raise_open_file_limit() -> None:
    # Every session holds sockets and files; the default soft limit (often 1024) is too low.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            _log.warning("nofile_limit_unchanged soft=%d hard=%d error=%r", soft, hard, error)


async def _serve(config: NodeConfig) -> None:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    node = await start_node(config)
    _log.info("node %s listening on %s", node.node_id, node.address)
    terminated = asyncio.create_task(node.wait_for_termination())
    stop_wait = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({terminated, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    await node.stop()
    await terminated
    _log.info("node %s stopped", node.node_id)


def main() -> None:
    """Entry point: configure logging, tracing and metrics, then serve until a signal."""
    config = load_config()
    configure_logging("sessionmesh-node", level=config.log_level)
    configure_tracing("sessionmesh-node")
    _raise_open_file_limit()
    metrics_address = start_metrics_server(config.metrics_listen)
    # The bound address (port 0 resolved) is what the node record publishes.
    try:
        asyncio.run(_serve(replace(config, metrics_listen=metrics_address)))
    except MeshError as error:
        # e.g. etcd unreachable or the port taken: one clear line, not a traceback.
        _log.error("node %s cannot start: %s", config.node_id, error.message)
        sys.exit(1)


if __name__ == "__main__":
    main()
