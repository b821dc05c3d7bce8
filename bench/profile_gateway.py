"""Profile the gateway's fast path: a process mesh, h2load on the gateway, py-spy on the
gateway process; prints where its time goes and writes a flame graph.

::

    make profile-gateway          # or: .venv/bin/python -m bench.profile_gateway [--seconds 8]

The same tracing settings as ``make bench`` (a parent-based ratio sampler). Own code of the
forwarder shows under ``gateway/`` and ``telemetry/hop.py``; the rest is grpc and asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.h2load import run_h2load
from bench.scenarios_unary import GET_SESSION_PATH, MIN_SESSION_BYTES
from bench.tracing_settings import TRACED_ENVIRONMENT
from protos import session_pb2
from testkit import MeshSettings, create_sessions, plan_sessions, running_process_mesh

TOP_FUNCTIONS = 25


def _top(raw: Path, count: int) -> list[tuple[float, float, str]]:
    """(self %, total %, frame) for the frames with the most samples in py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        frames = stack.split(";")
        samples += int(number)
        own[frames[-1]] += int(number)
        for frame in set(frames):
            total[frame] += int(number)
    return [
        (100 * own[frame] / samples, 100 * total[frame] / samples, frame)
        for frame, _ in own.most_common(count)
    ]


async def profile(seconds: float, out: Path) -> list[tuple[float, float, str]]:
    """Load the gateway for ``seconds`` under py-spy; the top frames (a flame graph to ``out``)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    sessions = plan_sessions(workspace_count=4, session_count=4)
    settings = MeshSettings(node_count=1, cluster="profile", environment=TRACED_ENVIRONMENT)
    with tempfile.TemporaryDirectory(prefix="sessionmesh-profile-") as state_dir:
        async with running_process_mesh(Path(state_dir), settings) as mesh:
            await create_sessions(mesh.gateway_address, sessions)
            message = session_pb2.GetSessionRequest(
                workspace_id=sessions[0][0], session_id=sessions[0][1]
            ).SerializeToString()
            raw = Path(state_dir) / "gateway.raw"
            pid = mesh.process_id("gateway")
            recorders = [
                subprocess.Popen(  # noqa: ASYNC220 - waited for in a thread below
                    [
                        *(py_spy, "record", "-p", str(pid), "-d", str(int(seconds))),
                        *("-r", "200", "-f", output_format, "-o", str(path)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for output_format, path in (("raw", raw), ("flamegraph", out))
            ]
            await asyncio.to_thread(
                run_h2load,
                mesh.gateway_address,
                GET_SESSION_PATH,
                message,
                clients=4,
                streams_per_client=16,
                duration_seconds=seconds + 1,
                warmup_seconds=0.5,
                min_response_bytes=MIN_SESSION_BYTES,
            )
            for recorder in recorders:
                await asyncio.to_thread(recorder.wait)
            return _top(raw, TOP_FUNCTIONS)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m bench.profile_gateway``."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_gateway", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path(".mesh/gateway-profile.svg"))
    arguments = parser.parse_args(argv)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    top = asyncio.run(profile(arguments.seconds, arguments.out.resolve()))
    print(f"{'self %':>7} {'total %':>8}  frame")
    for own, total, frame in top:
        print(f"{own:7.1f} {total:8.1f}  {frame}")
    print(f"flame graph: {arguments.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
