"""Raw unary gRPC load with ``h2load`` (Debian's ``nghttp2-client``), a compiled HTTP/2 load
generator: it costs the machine far less CPU than an asyncio client, so the servers measured,
not the generator, set the figure.

A gRPC unary call is an HTTP/2 POST of one length-prefixed message with ``content-type:
application/grpc``. h2load cannot read gRPC trailers, so a call that fails with a gRPC status
still counts as an HTTP 200 there: :func:`run_h2load` therefore checks the response bytes —
every successful call returns at least ``min_response_bytes`` of DATA, an error none.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

H2LOAD_NAME = "h2load"
INSTALL_HINT = "apt-get install nghttp2-client"

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded")
_DATA_BYTES = re.compile(r"traffic: .*?\((\d+)\) data")


def h2load_binary() -> str | None:
    """The ``h2load`` on PATH, or None when nghttp2-client is not installed."""
    return shutil.which(H2LOAD_NAME)


def grpc_frame(message: bytes) -> bytes:
    """``message`` as one gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class H2loadRun:
    """What one h2load run measured."""

    requests: int
    """Requests that completed with an HTTP 200."""
    seconds: float
    throughput_per_second: float
    response_data_bytes: int
    """DATA bytes received: the check that calls succeeded at gRPC level, not only HTTP."""
    latencies_ms: list[float]
    """Per request, from h2load's log file (only when asked for)."""


def run_h2load(
    address: str,
    method_path: str,
    message: bytes,
    *,
    clients: int,
    streams_per_client: int,
    duration_seconds: float,
    warmup_seconds: float,
    min_response_bytes: int,
    with_latencies: bool = False,
    headers: Sequence[str] = (),
) -> H2loadRun:
    """Call ``method_path`` on ``address`` (``host:port``, cleartext HTTP/2) with ``message``
    as fast as ``clients * streams_per_client`` streams allow, for ``duration_seconds``.

    Raises ``RuntimeError`` when h2load is missing, fails, or the calls did not succeed (no
    response bytes): a figure is only reported for calls that worked.
    """
    binary = h2load_binary()
    if binary is None:
        raise RuntimeError(f"h2load not found ({INSTALL_HINT})")
    with tempfile.TemporaryDirectory(prefix="sessionmesh-h2load-") as scratch:
        body = Path(scratch) / "request.bin"
        body.write_bytes(grpc_frame(message))
        log = Path(scratch) / "requests.log"
        command = [
            binary,
            f"http://{address}{method_path}",
            "--no-tls-proto=h2c",
            f"--clients={clients}",
            "--threads=1",
            f"--max-concurrent-streams={streams_per_client}",
            f"--duration={round(duration_seconds * 1000)}ms",
            f"--warm-up-time={round(warmup_seconds * 1000)}ms",
            f"--data={body}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            *(f"--header={header}" for header in headers),
        ]
        if with_latencies:
            command.append(f"--log-file={log}")
        finished = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=duration_seconds + warmup_seconds + 30,
            check=False,
        )
        output = finished.stdout + finished.stderr
        latencies = _read_latencies(log) if with_latencies and log.exists() else []
    return _parse(output, finished.returncode, min_response_bytes, latencies)


def _read_latencies(log: Path) -> list[float]:
    # Each line: start time (µs since epoch), HTTP status, elapsed µs.
    latencies = []
    for line in log.read_text().splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "200":
            latencies.append(int(fields[2]) / 1000)
    return latencies


def _parse(
    output: str, returncode: int, min_response_bytes: int, latencies: list[float]
) -> H2loadRun:
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    data = _DATA_BYTES.search(output)
    if returncode != 0 or finished is None or requests is None or data is None:
        raise RuntimeError(f"h2load failed (exit {returncode}):\n{output[-2000:]}")
    succeeded = int(requests.group(4))
    data_bytes = int(data.group(1))
    if succeeded == 0 or data_bytes < succeeded * min_response_bytes:
        raise RuntimeError(
            f"h2load: {succeeded} calls answered but only {data_bytes} response bytes "
            f"(expected ≥ {min_response_bytes} each): the calls failed at gRPC level\n"
            f"{output[-2000:]}"
        )
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return H2loadRun(
        requests=succeeded,
        seconds=seconds,
        throughput_per_second=float(finished.group(3)),
        response_data_bytes=data_bytes,
        latencies_ms=latencies,
    )
