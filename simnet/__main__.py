"""``python -m simnet`` / ``sessionmesh-simnet``: run the simulated network as a process.

::

    flag              environment             default
    --listen          SIMNET_LISTEN           127.0.0.1:7100
    --pair-delay-ms   SIMNET_PAIR_DELAY_MS    200    (negative: nobody scans QR codes;
                                                      a pairing code is entered at once)
    --qr-rotate-ms    SIMNET_QR_ROTATE_MS     20000
    --ack-delay-ms    SIMNET_ACK_DELAY_MS     5

Flags win over the environment. SIGINT or SIGTERM closes every connection and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from registry import InvalidInput, parse_host_port
from simnet.server import SimNet
from telemetry import configure_logging, raise_open_file_limit

_log = structlog.get_logger("simnet")

DEFAULT_LISTEN = "127.0.0.1:7100"


@dataclass(frozen=True)
class SimNetSettings:
    """How the simnet process runs."""

    listen_host: str
    """Interface to listen on."""
    listen_port: int
    """TCP port to listen on (0: any free port)."""
    pair_delay_ms: int = 200
    """How long the simulated phone takes to scan a QR code or enter a pairing code; negative:
    it never scans, and enters a pairing code at once."""
    qr_rotate_ms: int = 20_000
    """How long each QR code is shown before a new one replaces it."""
    ack_delay_ms: int = 5
    """Delay between the SENT, DELIVERED and READ acks of a message."""


def _host_port(value: str) -> tuple[str, int]:
    try:
        return parse_host_port(value, field="--listen")
    except InvalidInput as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> SimNetSettings:
    """Settings from flags, falling back to the ``SIMNET_*`` variables, then defaults."""
    parser = argparse.ArgumentParser(
        prog="sessionmesh-simnet", description="Run simnet, the stand-in messaging network."
    )
    add = parser.add_argument
    add("--listen", type=_host_port, default=environ.get("SIMNET_LISTEN") or DEFAULT_LISTEN)
    add("--pair-delay-ms", type=_integer, default=environ.get("SIMNET_PAIR_DELAY_MS") or "200")
    add("--qr-rotate-ms", type=_integer, default=environ.get("SIMNET_QR_ROTATE_MS") or "20000")
    add("--ack-delay-ms", type=_integer, default=environ.get("SIMNET_ACK_DELAY_MS") or "5")
    # argparse applies `type` to string defaults, so the environment is validated too.
    args = parser.parse_args(argv)
    host, port = args.listen
    return SimNetSettings(
        listen_host=host,
        listen_port=port,
        pair_delay_ms=args.pair_delay_ms,
        qr_rotate_ms=args.qr_rotate_ms,
        ack_delay_ms=args.ack_delay_ms,
    )


async def _serve(settings: SimNetSettings) -> None:
    simnet = SimNet(
        pair_delay_ms=settings.pair_delay_ms,
        qr_rotate_ms=settings.qr_rotate_ms,
        ack_delay_ms=settings.ack_delay_ms,
    )
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    await simnet.start(settings.listen_host, settings.listen_port)
    _log.info("simnet_listening", address=simnet.address)
    try:
        await stop_requested.wait()
    finally:
        await simnet.stop()
        _log.info("simnet_exited")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m simnet`` and ``sessionmesh-simnet``."""
    settings = load_settings(argv, os.environ)
    configure_logging(
        "sessionmesh-simnet",
        level=os.environ.get("LOG_LEVEL", "INFO"),
        log_format=os.environ.get("LOG_FORMAT", "text").lower(),
    )
    raise_open_file_limit()
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
