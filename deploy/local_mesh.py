"""`make up`: a whole local mesh on one machine — etcd, simnet, N nodes, a gateway.

Each process runs as a child with its output prefixed by its name; the accounts
database is one SQLite file and the shared session storage a local folder, both
under the state directory. Ctrl-C (or SIGTERM) stops the children in reverse
order of start, each with SIGTERM first, so nodes deregister and flush cleanly.

Tokens are on, as everywhere by default: the first start writes an admin token to
``<state>/admin-token`` (the gateway and nodes bootstrap it), and every start makes a
token for the demo workspace ``ws-1``; the banner prints both inside commands ready to
paste.

Ports (flags win over the environment)::

    --gateway-port   MESH_GATEWAY_PORT   7000
    --node-ports     MESH_NODE_PORTS     7001,7002   (one node per port)
    --simnet-port    MESH_SIMNET_PORT    7100
    --etcd-port      MESH_ETCD_PORT      2379        (peer port: +1)
    --metrics-port   MESH_METRICS_PORT   9100        (gateway; node i: +i; 0 = off)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from protos import token_pb2, token_pb2_grpc
from registry.auth import (
    bearer_metadata,
    new_admin_token_text,
)
from testkit.etcd import EtcdProcess
from testkit.waiting import ProcessStartError, wait_listening

_COLOURS = ("36", "33", "35", "32", "34", "31", "96", "93")
_START_TIMEOUT_SECONDS = 30.0
DEMO_WORKSPACE = "ws-1"
DEMO_SCOPES = ("sessions.read", "messages.send", "sessions.manage", "webhooks.manage")


@dataclass(frozen=True)
class MeshLayout:
    """Where every process of the local mesh listens and keeps its state."""

    host: str
    """Interface every process binds to."""
    gateway_port: int
    node_ports: tuple[int, ...]
    """One node per port, named node-1, node-2, …"""
    simnet_port: int
    etcd_port: int
    """etcd client port; its peer port is the next one."""
    metrics_port: int
    """Gateway metrics port; node i uses ``metrics_port + i``; 0 turns metrics off."""
    state_dir: Path
    """Holds etcd data, shared session storage and the SQLite accounts DB."""
    max_sessions: int
    """MAX_SESSIONS_PER_INSTANCE of every node."""
    pair_delay_ms: int
    """How long simnet's simulated phone takes to scan a QR code."""

    @property
    def etcd_url(self) -> str:
        """The etcd client URL."""
        return f"http://{self.host}:{self.etcd_port}"

    @property
    def database_url(self) -> str:
        """The shared SQLite accounts DB."""
        return f"sqlite:///{(self.state_dir / 'accounts.db').resolve()}"

    def metrics_listen(self, index: int) -> str:
        """Metrics address of process ``index`` (0 = gateway), empty when off."""
        return f"{self.host}:{self.metrics_port + index}" if self.metrics_port else ""


def parse_layout(argv: Sequence[str] | None, environ: Mapping[str, str]) -> MeshLayout:
    """Build the layout from flags, falling back to ``MESH_*`` variables, then defaults."""
    parser = argparse.ArgumentParser(prog="make up", description=__doc__.splitlines()[0])

    def env(name: str, default: str) -> str:
        return environ.get(name, default)

    parser.add_argument("--host", default=env("MESH_HOST", "127.0.0.1"))
    parser.add_argument("--gateway-port", type=int, default=int(env("MESH_GATEWAY_PORT", "7000")))
    parser.add_argument("--node-ports", default=env("MESH_NODE_PORTS", "7001,7002"))
    parser.add_argument("--simnet-port", type=int, default=int(env("MESH_SIMNET_PORT", "7100")))
    parser.add_argument("--etcd-port", type=int, default=int(env("MESH_ETCD_PORT", "2379")))
    parser.add_argument("--metrics-port", type=int, default=int(env("MESH_METRICS_PORT", "9100")))
    parser.add_argument("--state-dir", default=env("MESH_STATE_DIR", ".mesh"))
    parser.add_argument(
        "--max-sessions", type=int, default=int(env("MAX_SESSIONS_PER_INSTANCE", "500"))
    )
    parser.add_argument(
        "--pair-delay-ms", type=int, default=int(env("SIMNET_PAIR_DELAY_MS", "1500"))
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete the state directory first (sessions, DB)"
    )
    args = parser.parse_args(argv)
    try:
        node_ports = tuple(int(port) for port in args.node_ports.split(",") if port.strip())
    except ValueError:
        parser.error(f"--node-ports {args.node_ports!r}: use comma-separated port numbers")
    if not node_ports:
        parser.error("--node-ports: at least one node is needed")
    state_dir = Path(args.state_dir)
    if args.fresh and state_dir.exists():
        shutil.rmtree(state_dir)
    return MeshLayout(
        host=args.host,
        gateway_port=args.gateway_port,
        node_ports=node_ports,
        simnet_port=args.simnet_port,
        etcd_port=args.etcd_port,
        metrics_port=args.metrics_port,
        state_dir=state_dir,
        max_sessions=args.max_sessions,
        pair_delay_ms=args.pair_delay_ms,
    )


def local_etcd(layout: MeshLayout) -> EtcdProcess:
    """The local mesh's etcd (the test kit's): its data in ``<state>/etcd``, kept across runs,
    on the layout's client port and the next one."""
    return EtcdProcess(
        data_dir=layout.state_dir / "etcd",
        log_path=layout.state_dir / "etcd.log",  # unused: the child's output is prefixed
        name="mesh",
        host=layout.host,
        client_port=layout.etcd_port,
        peer_port=layout.etcd_port + 1,
    )


@dataclass
class _Child:
    name: str
    process: asyncio.subprocess.Process
    pump: asyncio.Task[None] = field(init=False)


class LocalMesh:
    """Starts, watches and stops the child processes of one local mesh."""

    def __init__(self, layout: MeshLayout) -> None:
        self._layout = layout
        self._children: list[_Child] = []
        self.admin_token = ""
        self.demo_token = ""

    @property
    def admin_token_file(self) -> Path:
        """Where the admin token lives (made on the first start, kept after)."""
        return self._layout.state_dir / "admin-token"

    def _ensure_admin_token(self) -> None:
        path = self.admin_token_file
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(new_admin_token_text() + "\n")
        self.admin_token = path.read_text().strip()

    async def _create_demo_token(self) -> None:
        address = f"{self._layout.host}:{self._layout.gateway_port}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.CreateToken(
                token_pb2.CreateTokenRequest(
                    workspace_id=DEMO_WORKSPACE, scopes=DEMO_SCOPES, name="make up demo"
                ),
                metadata=bearer_metadata(self.admin_token),
                timeout=10,
            )
        self.demo_token = reply.token

    async def start(self) -> None:
        """Start every process in dependency order, waiting until each one listens."""
        layout = self._layout
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_admin_token()
        auth = ["--admin-token-file", str(self.admin_token_file)]
        try:
            etcd_command = local_etcd(layout).command()
        except RuntimeError as error:  # no etcd binary
            raise SystemExit(str(error)) from None
        # etcd runs as one more child, so its lines are prefixed like everyone else's.
        await self._spawn("etcd", etcd_command, port=layout.etcd_port)
        await self._spawn(
            "simnet",
            [
                sys.executable,
                "-m",
                "simnet",
                "--listen",
                f"{layout.host}:{layout.simnet_port}",
                "--pair-delay-ms",
                str(layout.pair_delay_ms),
            ],
            port=layout.simnet_port,
        )
        await self._run_once(
            "migrate",
            [
                sys.executable,
                "-m",
                "registry.accounts",
                "upgrade",
                "--database-url",
                layout.database_url,
            ],
        )
        for index, port in enumerate(layout.node_ports, start=1):
            await self._spawn(
                f"node-{index}",
                [
                    sys.executable,
                    "-m",
                    "node",
                    "--node-id",
                    f"node-{index}",
                    "--listen",
                    f"{layout.host}:{port}",
                    "--etcd",
                    layout.etcd_url,
                    "--storage",
                    str(layout.state_dir / "sessions"),
                    "--max-sessions",
                    str(layout.max_sessions),
                    "--database-url",
                    layout.database_url,
                    "--simnet",
                    f"{layout.host}:{layout.simnet_port}",
                    "--metrics-listen",
                    layout.metrics_listen(index),
                    "--webhook-allow-private",  # local receivers, for trying webhooks out
                    *auth,
                ],
                port=port,
            )
        await self._spawn(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway",
                "--listen",
                f"{layout.host}:{layout.gateway_port}",
                "--etcd",
                layout.etcd_url,
                "--metrics-listen",
                layout.metrics_listen(0),
                "--webhook-allow-private",
                *auth,
            ],
            port=layout.gateway_port,
        )
        await self._create_demo_token()

    async def _spawn(self, name: str, command: list[str], *, port: int) -> None:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
        child = _Child(name, process)
        child.pump = asyncio.create_task(self._pump(name, process))
        self._children.append(child)
        await self._wait_listening(child, port)

    async def _run_once(self, name: str, command: list[str]) -> None:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        await self._pump(name, process)
        if await process.wait() != 0:
            raise SystemExit(f"{name} failed (exit {process.returncode})")

    async def _pump(self, name: str, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        colour = _COLOURS[len(self._children) % len(_COLOURS)]
        prefix = f"\033[{colour}m{name:>8} |\033[0m " if sys.stdout.isatty() else f"{name:>8} | "
        async for line in process.stdout:
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    async def _wait_listening(self, child: _Child, port: int) -> None:
        try:
            await wait_listening(
                f"{self._layout.host}:{port}",
                name=child.name,
                exit_code=lambda: child.process.returncode,
                timeout_seconds=_START_TIMEOUT_SECONDS,
            )
        except ProcessStartError as error:
            raise SystemExit(str(error).strip()) from None

    async def wait_for_exit(self) -> str:
        """Return the name of the first child that exits."""
        waits = {asyncio.create_task(child.process.wait()): child.name for child in self._children}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[done.pop()]

    async def stop(self) -> None:
        """SIGTERM every child, newest first; SIGKILL whatever outlives its grace period."""
        for child in reversed(self._children):
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(15):
                        await child.process.wait()
                except TimeoutError:
                    child.process.kill()
                    await child.process.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await child.pump

    def banner(self) -> str:
        """What to paste next."""
        layout = self._layout
        gateway = f"{layout.host}:{layout.gateway_port}"
        nodes = ", ".join(f"node-{i} {layout.host}:{p}" for i, p in enumerate(layout.node_ports, 1))
        metrics = (
            f"  metrics   http://{layout.metrics_listen(0)}/metrics (gateway), "
            f"node i on port {layout.metrics_port}+i\n"
            if layout.metrics_port
            else ""
        )
        create = '{"workspace_id":"ws-1","session_id":"s-1","phone_number":"+14155550100"}'
        send = (
            '{"workspace_id":"ws-1","session_id":"s-1","client_message_id":"m-1",'
            '"to":"+14155550199","text":"hello"}'
        )
        get = '{"workspace_id":"ws-1","session_id":"s-1"}'
        svc = "sessionmesh.v1.SessionService"
        grpcurl = f".venv/bin/grpcurl -plaintext -H 'authorization: Bearer {self.demo_token}'"
        meshctl = f"MESHCTL_TOKEN={self.demo_token} .venv/bin/meshctl"
        return (
            "\nsessionmesh is up\n"
            f"  gateway   {gateway}\n"
            f"  nodes     {nodes}\n"
            f"  etcd      {layout.etcd_url}\n"
            f"  simnet    {layout.host}:{layout.simnet_port}\n"
            f"{metrics}"
            f"  storage   {layout.state_dir / 'sessions'}\n"
            f"  accounts  {layout.database_url}\n"
            f"  admin token  {self.admin_token}  (in {self.admin_token_file})\n"
            f"  demo token   {self.demo_token}  ({DEMO_WORKSPACE}: {', '.join(DEMO_SCOPES)})\n"
            "\ntry (grpcurl is in .venv/bin; every call needs a token):\n"
            f"  .venv/bin/grpcurl -plaintext {gateway} list\n"
            f"  {grpcurl} -d '{create}' {gateway} {svc}/CreateSession\n"
            f"  {grpcurl} -d '{get}' {gateway} {svc}/GetSession\n"
            f"  {grpcurl} -d '{send}' {gateway} {svc}/SendMessage\n"
            f"  {grpcurl} -d '{get}' {gateway} {svc}/WatchSession\n"
            f"  MESHCTL_TOKEN={self.admin_token} .venv/bin/meshctl nodes\n"
            "\nwebhooks (make up lets them reach local receivers: --webhook-allow-private):\n"
            f"  {meshctl} webhook set {DEMO_WORKSPACE} http://{layout.host}:8080/hooks"
            "   # prints the signing secret, once\n"
            f"  .venv/bin/python -m testkit.webhook_sink --port 8080 --secret <that secret> "
            "--out /dev/stdout\n"
            f"  {meshctl} webhook test {DEMO_WORKSPACE}\n"
            "\nCtrl-C stops everything.\n"
        )


async def run(layout: MeshLayout) -> int:
    """Start the mesh, print the banner, and stop everything on a signal or a child's exit."""
    mesh = LocalMesh(layout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    exit_code = 0
    try:
        await mesh.start()
        print(mesh.banner(), flush=True)
        exited = asyncio.create_task(mesh.wait_for_exit())
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            print(f"{exited.result()} exited; stopping the mesh", file=sys.stderr, flush=True)
            exit_code = 1
        for task in (exited, stopping):
            task.cancel()
    except SystemExit as error:
        print(f"make up: {error}", file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        print("stopping the mesh…", flush=True)
        await mesh.stop()
        print("stopped", flush=True)
    return exit_code


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``make up`` (``python -m deploy.local_mesh``)."""
    layout = parse_layout(argv, os.environ)
    raise SystemExit(asyncio.run(run(layout)))


if __name__ == "__main__":
    main()
