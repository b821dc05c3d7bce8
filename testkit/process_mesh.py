"""A whole mesh as real OS processes: a private etcd, simnet, N nodes and a gateway.

Used by the kill/restart tests and by the benchmark's scenarios: a node can be SIGKILLed,
SIGTERMed and started again, and etcd restarted on the same ports and data dir. Every
process writes to its own log file under the state directory; :meth:`ProcessMesh.log_tail`
reads them back when something fails, and :func:`running_process_mesh` prints them all when its
body raises. It stops everything in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aetcd

from registry import ClusterKeys, EtcdClient, NodeRecord, parse_endpoints
from simnet import SimNetAdmin
from testkit.etcd import EtcdProcess
from testkit.etcd_cluster import EtcdCluster
from testkit.ports import HOST, free_port
from testkit.waiting import wait_listening

START_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 20.0
"""How long a SIGTERMed process may take (a node drains its slots first) before SIGKILL."""
ETCD_NAME = "etcd"


_CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used (Linux ``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: the fields after it follow its ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_SECOND


@dataclass(frozen=True)
class MeshSettings:
    """The shape of a process mesh."""

    node_count: int = 3
    """Nodes started at the beginning, named node-1 … node-N."""
    lease_ttl_seconds: int | None = 2
    """Every node's ``--lease-ttl-seconds``; None: the node's own default (5)."""
    pair_delay_ms: int = 20
    """simnet's QR scan delay."""
    max_sessions: int | None = 500
    """Every node's ``--max-sessions``; None: the node's own default."""
    extra_node_flags: tuple[str, ...] = ()
    """More flags for every node (e.g. ``--reconcile-interval-seconds 1``)."""
    cluster: str = "procmesh"
    """Cluster name (the etcd is private, so any name will do)."""
    environment: tuple[tuple[str, str], ...] = ()
    """Extra environment variables for every process (e.g. ``OTEL_TRACES_SAMPLER``)."""
    node_module: str = "node"
    """What ``python -m`` runs as a node: ``testkit.blockable_node`` for a node whose event
    loop a test can block (:meth:`ProcessMesh.block_node_loop`)."""
    etcd_members: int = 1
    """Members of the private etcd cluster (3 for the tests of etcd's own faults); every
    process is given every member's URL."""
    database_url: str = ""
    """The accounts DB every node uses (migrated at start); empty: a SQLite file of the mesh."""
    auth_flags: tuple[str, ...] = ("--auth", "off")
    """How the gateway and nodes check callers: tokens off, unless a test is about them."""
    gateway_flags: tuple[str, ...] = ()
    """More flags for the gateway (e.g. ``--webhook-allow-private``)."""


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def is_running(self) -> bool:
        return self.popen.poll() is None


@dataclass
class ProcessMesh:
    """Handles on a running process mesh; build it with :func:`running_process_mesh`."""

    state_dir: Path
    settings: MeshSettings
    etcd_cluster: EtcdCluster = field(init=False)
    """The private etcd cluster (its ports and data dirs stay the same across restarts)."""
    simnet_address: str = ""
    gateway_address: str = ""
    node_addresses: dict[str, str] = field(default_factory=dict)
    """Running (or last started) nodes: id → gRPC address."""
    _processes: dict[str, _Process] = field(default_factory=dict)
    _spawned: list[_Process] = field(default_factory=list)
    etcd: aetcd.Client | None = None
    """A client of the private etcd (over every member; reconnects after :meth:`restart_etcd`)."""

    def __post_init__(self) -> None:
        self.etcd_cluster = EtcdCluster(
            self.state_dir, size=self.settings.etcd_members, name=ETCD_NAME
        )

    @property
    def etcd_process(self) -> EtcdProcess:
        """The first etcd member (the only one, unless ``etcd_members`` > 1)."""
        return self.etcd_cluster.members[0]

    @property
    def keys(self) -> ClusterKeys:
        """The mesh's etcd key layout."""
        return ClusterKeys(self.settings.cluster)

    @property
    def etcd_url(self) -> str:
        """Client URLs of the private etcd's members, comma-separated (``--etcd``)."""
        return self.etcd_cluster.endpoints

    @property
    def database_url(self) -> str:
        """The accounts DB: ``settings.database_url``, or a shared SQLite file."""
        if self.settings.database_url:
            return self.settings.database_url
        return f"sqlite:///{(self.state_dir / 'accounts.db').resolve()}"

    @property
    def running_processes(self) -> list[str]:
        """Names of the processes alive now (etcd's members not included)."""
        return sorted(name for name, process in self._processes.items() if process.is_running)

    @property
    def running_nodes(self) -> list[str]:
        """Ids of the node processes alive now."""
        return sorted(
            name
            for name, process in self._processes.items()
            if name.startswith("node-") and process.is_running
        )

    # -- processes --------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> _Process:
        log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in _reap
        log.write(f"\n=== start {name} at {time.strftime('%H:%M:%S')} ===\n".encode())
        log.flush()
        popen = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "LOG_FORMAT": "json",  # so that events() can read them back
                "SESSIONMESH_BLOCK_SECONDS_FILE": str(self.state_dir / f"{name}.block-seconds"),
                **dict(self.settings.environment),
                "PYTHONUNBUFFERED": "1",
            },
            start_new_session=True,  # a Ctrl-C of the test run reaches only the harness
        )
        process = _Process(name, popen, log)
        self._processes[name] = process
        self._spawned.append(process)
        return process

    def process_id(self, name: str) -> int:
        """The OS pid of the process started as ``name`` (``etcd``, ``gateway``, ``node-1``, …)."""
        for member in self.etcd_cluster.members:
            if name == member.name:
                return member.pid
        return self._processes[name].popen.pid

    async def start_process(self, name: str, command: list[str], address: str) -> None:
        """Start one more process (stopped with the mesh) and wait until ``address`` listens."""
        await self._wait_listening(self._spawn(name, command), address)

    async def _wait_listening(self, process: _Process, address: str) -> None:
        await wait_listening(
            address,
            name=process.name,
            exit_code=process.popen.poll,
            log_tail=lambda: self.log_tail(process.name),
            timeout_seconds=START_TIMEOUT_SECONDS,
        )

    async def _reap(self, process: _Process, *, grace_seconds: float) -> int:
        """SIGTERM (grace > 0) or SIGKILL, wait, close the log; the exit code."""
        if process.is_running:
            if grace_seconds > 0:
                process.popen.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(process.popen.wait, grace_seconds)
                except subprocess.TimeoutExpired:
                    process.popen.kill()
            else:
                process.popen.kill()
        code = await asyncio.to_thread(process.popen.wait)
        process.log.close()
        return code

    def log_tail(self, name: str, *, lines: int = 40) -> str:
        """The last ``lines`` lines of one process's log."""
        path = self.state_dir / f"{name}.log"
        if not path.exists():
            return f"(no log for {name})"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name}.log (tail) ---\n" + "\n".join(text)

    def all_log_tails(self, *, lines: int = 30) -> str:
        """The tail of every process's log, for a failure message."""
        etcd_names = [member.name for member in self.etcd_cluster.members]
        names = sorted({*etcd_names, *(process.name for process in self._spawned)})
        return "\n".join(self.log_tail(name, lines=lines) for name in names)

    # -- etcd ---------------------------------------------------------------------------

    async def start_etcd(self) -> None:
        """Start etcd on the mesh's fixed ports and data dir; wait until the mesh's own etcd
        client gets answers."""
        await self.etcd_cluster.start(timeout_seconds=START_TIMEOUT_SECONDS)
        if self.etcd is None:
            self.etcd = EtcdClient(parse_endpoints(self.etcd_url))
            self.etcd.start_health_checks()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:  # the client's channel reconnects after a restart at its own pace
            try:
                await self.etcd.status()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop_etcd(self) -> None:
        """SIGTERM every etcd member and wait for them to exit."""
        await self.etcd_cluster.stop()

    async def restart_etcd(self) -> float:
        """Stop etcd and start it again on the same ports and data dir; seconds it was down."""
        started = time.monotonic()
        await self.stop_etcd()
        await self.start_etcd()
        return time.monotonic() - started

    # -- simnet and gateway -----------------------------------------------------------

    async def start_simnet(self) -> None:
        """Start simnet on a free port."""
        self.simnet_address = f"{HOST}:{free_port()}"
        process = self._spawn(
            "simnet",
            [
                sys.executable, "-m", "simnet",
                "--listen", self.simnet_address,
                "--pair-delay-ms", str(self.settings.pair_delay_ms),
                "--ack-delay-ms", "2",
            ],
        )  # fmt: skip
        await self._wait_listening(process, self.simnet_address)

    async def migrate_database(self) -> None:
        """Create the accounts DB schema (``python -m registry.accounts upgrade``)."""
        command = [sys.executable, "-m", "registry.accounts", "upgrade"]
        completed = await asyncio.to_thread(
            subprocess.run,
            [*command, "--database-url", self.database_url],
            capture_output=True,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"migration failed: {completed.stdout!r} {completed.stderr!r}")

    async def restart_gateway(self) -> None:
        """SIGKILL the gateway and start it again, on the same address."""
        await self._reap(self._processes["gateway"], grace_seconds=0)
        await self.start_gateway(address=self.gateway_address)

    async def start_gateway(self, *, address: str = "") -> None:
        """Start the gateway on ``address`` (default: a free port) and wait until it listens."""
        self.gateway_address = address or f"{HOST}:{free_port()}"
        process = self._spawn(
            "gateway",
            [
                sys.executable, "-m", "gateway",
                "--listen", self.gateway_address,
                "--etcd", self.etcd_url,
                "--cluster", self.settings.cluster,
                *self.settings.auth_flags,
                *self.settings.gateway_flags,
            ],
        )  # fmt: skip
        await self._wait_listening(process, self.gateway_address)

    async def simnet_stats(self, *, include_ids: bool = True) -> dict[str, Any]:
        """simnet's ground truth: deliveries, replaced, live connections, QR codes by account."""
        async with SimNetAdmin(self.simnet_address) as admin:
            return await admin.stats(include_ids=include_ids)

    # -- nodes --------------------------------------------------------------------------

    def node_command(self, node_id: str, address: str) -> list[str]:
        """The command line of one node process."""
        return [
            sys.executable, "-m", self.settings.node_module,
            "--node-id", node_id,
            "--listen", address,
            "--etcd", self.etcd_url,
            "--cluster", self.settings.cluster,
            "--storage", str((self.state_dir / "sessions").resolve()),
            "--database-url", self.database_url,
            "--simnet", self.simnet_address,
            *self._optional_node_flags(),
            *self.settings.auth_flags,
            *self.settings.extra_node_flags,
        ]  # fmt: skip

    def _optional_node_flags(self) -> list[str]:
        flags: list[str] = []
        if self.settings.max_sessions is not None:
            flags += ["--max-sessions", str(self.settings.max_sessions)]
        if self.settings.lease_ttl_seconds is not None:
            flags += ["--lease-ttl-seconds", str(self.settings.lease_ttl_seconds)]
        return flags

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each running mesh process has used so far, by name:
        etcd, simnet, the nodes and the gateway (not this process, the load generator)."""
        etcd_names = [member.name for member in self.etcd_cluster.members if member.is_running]
        running = [name for name, process in self._processes.items() if process.is_running]
        names = [*etcd_names, *running]
        found: dict[str, float] = {}
        for name in dict.fromkeys(names):
            with contextlib.suppress(OSError, KeyError, ValueError, IndexError):
                found[name] = process_cpu_seconds(self.process_id(name))
        return found

    def events(self, event: str, *, prefix: str = "node-") -> list[dict[str, Any]]:
        """Every logged event named ``event`` of the processes whose name starts with
        ``prefix``, in log order per process (each with its ``process`` added)."""
        found: list[dict[str, Any]] = []
        for path in sorted(self.state_dir.glob(f"{prefix}*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{") or f'"{event}"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == event:
                        found.append({**record, "process": path.stem})
        return found

    async def start_node(self, node_id: str) -> str:
        """Start (or restart) a node on a fresh port; wait until it listens and etcd lists it
        at that address. Its address."""
        if node_id in self._processes and self._processes[node_id].is_running:
            raise RuntimeError(f"{node_id} is already running")
        address = f"{HOST}:{free_port()}"
        process = self._spawn(node_id, self.node_command(node_id, address))
        self.node_addresses[node_id] = address
        await self._wait_listening(process, address)
        await self.wait_membership()
        return address

    def block_node_loop(self, node_id: str, *, seconds: float) -> None:
        """Make ``node_id``'s event loop stop for ``seconds`` (its other threads go on); the
        mesh must run nodes as ``testkit.blockable_node``."""
        (self.state_dir / f"{node_id}.block-seconds").write_text(str(seconds))
        os.kill(self.process_id(node_id), signal.SIGUSR1)

    def toggle_node_storage(self, node_id: str) -> None:
        """Make ``node_id``'s storage hang, or answer again (every ``fsync`` of its session
        storage waits meanwhile); the mesh must run nodes as ``testkit.blockable_node``."""
        os.kill(self.process_id(node_id), signal.SIGUSR2)

    async def kill_node(self, node_id: str) -> None:
        """SIGKILL a node: no drain, no lease revoke; its lease must expire."""
        await self._reap(self._processes[node_id], grace_seconds=0)

    async def kill_all_nodes(self) -> None:
        """SIGKILL every running node: after a measurement, so teardown need not drain them."""
        await asyncio.gather(*(self.kill_node(node_id) for node_id in self.running_nodes))

    async def stop_node(self, node_id: str) -> int:
        """SIGTERM a node (it drains) and wait for it to exit; its exit code."""
        return await self._reap(self._processes[node_id], grace_seconds=STOP_GRACE_SECONDS)

    async def node_records(self) -> dict[str, NodeRecord]:
        """What etcd's ``nodes/`` holds now."""
        assert self.etcd is not None
        found: dict[str, NodeRecord] = {}
        for item in await self.etcd.get_prefix(self.keys.nodes_prefix):
            record = NodeRecord.from_json(item.value)
            found[record.node_id] = record
        return found

    async def wait_membership(self, *, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Wait until etcd lists exactly the running nodes, each at its current address."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            expected = {node_id: self.node_addresses[node_id] for node_id in self.running_nodes}
            self._raise_if_a_node_died(expected)
            records = await self.node_records()
            seen = {node_id: record.address for node_id, record in records.items()}
            if seen == expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"membership {seen} never became {expected}\n{self.all_log_tails()}"
                )
            await asyncio.sleep(0.05)

    def _raise_if_a_node_died(self, expected: dict[str, str]) -> None:
        for node_id in self.node_addresses:
            process = self._processes[node_id]
            if node_id not in expected and not process.log.closed and not process.is_running:
                raise RuntimeError(
                    f"{node_id} exited (code {process.popen.returncode}):\n"
                    + self.log_tail(node_id)
                )

    async def close(self) -> None:
        """Stop every process (nodes first, etcd last) and close the etcd client."""
        order = {"gateway": 0, "simnet": 2}
        for process in sorted(self._spawned, key=lambda p: order.get(p.name, 1)):
            if process.log.closed:
                continue
            # A short grace: teardown should be quick, and stragglers get SIGKILL.
            await self._reap(process, grace_seconds=5)
        await self.etcd_cluster.stop(grace_seconds=5)
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                await self.etcd.close()
            self.etcd = None


@asynccontextmanager
async def running_process_mesh(
    state_dir: Path, settings: MeshSettings | None = None
) -> AsyncIterator[ProcessMesh]:
    """Start etcd, simnet, the accounts DB, ``settings.node_count`` nodes and a gateway as
    processes; stop them all on exit, whatever happens. When starting or the body fails, the
    tail of every process's log is printed (to stderr) first."""
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    mesh = ProcessMesh(state_dir=state_dir, settings=settings or MeshSettings())
    try:
        await mesh.start_etcd()
        await mesh.start_simnet()
        await mesh.migrate_database()
        # Started together: a Python process takes a second or two to import and bind.
        node_ids = [f"node-{index}" for index in range(1, mesh.settings.node_count + 1)]
        await asyncio.gather(*(mesh.start_node(node_id) for node_id in node_ids))
        await mesh.start_gateway()
        yield mesh
    except BaseException:
        print(mesh.all_log_tails(lines=40), file=sys.stderr, flush=True)
        raise
    finally:
        await mesh.close()
