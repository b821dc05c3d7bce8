"""``sessionmesh-gateway`` / ``python -m gateway``: run one gateway until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog

from gateway.config import GatewayConfig, load_config
from gateway.server import start_gateway
from registry import MeshError
from telemetry import configure_logging, configure_tracing, start_metrics_server

_log = structlog.get_logger("gateway")


async def _serve(config: GatewayConfig) -> None:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    gateway = await start_gateway(config)
    _log.info("gateway_listening", address=gateway.address)
    terminated = asyncio.create_task(gateway.wait_for_termination())
    stop_wait = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({terminated, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    await gateway.stop()
    await terminated
    _log.info("gateway_exited")


def main() -> None:
    """Entry point: configure logging, tracing and metrics, then serve until a signal."""
    config = load_config()
    configure_logging("sessionmesh-gateway", level=config.log_level, log_format=config.log_format)
    configure_tracing("sessionmesh-gateway")
    metrics_address = start_metrics_server(config.metrics_listen, tls=config.tls)
    if metrics_address:
        scheme = "http" if config.tls is None else "https"
        _log.info("metrics_listening", url=f"{scheme}://{metrics_address}/metrics")
    try:
        asyncio.run(_serve(config))
    except MeshError as error:
        # e.g. etcd unreachable or the port taken: one clear line, not a traceback.
        _log.error("gateway_start_failed", reason=error.message)
        sys.exit(1)


if __name__ == "__main__":
    main()
