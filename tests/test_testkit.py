"""The test kit itself: ports picked outside the ephemeral range and never twice, an etcd that
answers and restarts on its ports with its data, waits that fail fast when a process exits,
a TCP proxy that refuses, blackholes and resumes, and a public face listed in ``__all__``."""

from __future__ import annotations

import asyncio
import random
import socket
import sys
from pathlib import Path

import aetcd
import pytest

import testkit
from testkit import (
    EtcdProcess,
    ProcessStartError,
    etcd_in,
    free_port,
    ports,
    running_tcp_proxy,
    wait_listening,
)
from testkit.ports import HOST


def _ephemeral_start() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as range_file:
        return int(range_file.read().split()[0])


class TestPorts:
    """Ports picked for local processes are free, outside the ephemeral range, never twice."""

    def test_a_span_of_ports_is_free_and_below_the_ephemeral_range(self) -> None:
        port = free_port(span=2)
        assert port + 1 < _ephemeral_start()
        with socket.socket() as first, socket.socket() as second:
            first.bind((HOST, port))
            second.bind((HOST, port + 1))

    def test_a_port_is_never_handed_out_twice(self) -> None:
        picked = [free_port() for _ in range(300)]
        assert len(set(picked)) == len(picked)

    def test_a_port_in_use_is_not_picked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        busy_port, other_port = free_port(), free_port()
        draws = iter([busy_port, other_port])
        monkeypatch.setattr(random, "randint", lambda low, high: next(draws))
        with socket.socket() as busy:
            busy.bind((HOST, busy_port))
            busy.listen()
            ports._handed_out.difference_update({busy_port, other_port})
            assert free_port() == other_port


async def _get(url: str, key: bytes) -> bytes | None:
    host, port = url.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        got = await client.get(key)
        return None if got is None else bytes(got.value)


class TestEtcdProcess:
    """The session's etcd answers aetcd; a private one restarts on its ports with its data."""

    async def test_the_session_etcd_round_trips_a_key(self, etcd_url: str) -> None:
        host, port = etcd_url.removeprefix("http://").split(":")
        async with aetcd.Client(host=host, port=int(port)) as client:
            await client.put(b"/fixture/probe", b"hello")
            got = await client.get(b"/fixture/probe")
            assert got is not None
            assert got.value == b"hello"

    async def test_a_restart_keeps_the_url_the_data_and_writes_one_log(
        self, tmp_path: Path
    ) -> None:
        etcd = etcd_in(tmp_path)
        await etcd.start()
        try:
            url, first_pid = etcd.url, etcd.pid
            host, port = url.removeprefix("http://").split(":")
            async with aetcd.Client(host=host, port=int(port)) as client:
                await client.put(b"/kit/kept", b"across the restart")
            down_seconds = await etcd.restart()
            assert etcd.is_running and etcd.pid != first_pid
            assert etcd.url == url
            assert 0 < down_seconds < 10
            assert await _get(etcd.url, b"/kit/kept") == b"across the restart"
            assert etcd.log_path.read_text().count("=== start etcd") == 2
        finally:
            await etcd.stop()
        assert not etcd.is_running
        assert await etcd.stop() == etcd.stop_blocking()  # stopping twice is harmless

    def test_blocking_start_and_stop_serve_a_synchronous_caller(self, tmp_path: Path) -> None:
        etcd = etcd_in(tmp_path, name="sync")
        etcd.start_blocking()
        try:
            assert etcd.is_running
            with socket.create_connection((HOST, etcd.client_port), timeout=2):
                pass
        finally:
            code = etcd.stop_blocking()
        assert code is not None and not etcd.is_running
        assert (tmp_path / "sync-data" / "member").is_dir()

    async def test_a_second_start_of_a_running_etcd_is_refused(self, tmp_path: Path) -> None:
        etcd = EtcdProcess(data_dir=tmp_path / "data", log_path=tmp_path / "etcd.log")
        await etcd.start()
        try:
            with pytest.raises(RuntimeError, match="already running"):
                await etcd.start()
        finally:
            await etcd.stop()


class TestWaitListening:
    """``wait_listening`` returns once a port accepts, and fails fast when the process exits."""

    async def test_returns_once_the_port_accepts(self) -> None:
        server = await asyncio.start_server(lambda reader, writer: writer.close(), HOST, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            async with asyncio.timeout(5):
                await wait_listening(f"{HOST}:{port}", timeout_seconds=5)
        finally:
            server.close()
            await server.wait_closed()

    async def test_a_process_that_exits_fails_at_once_with_its_log(self) -> None:
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
        await process.wait()
        expected = r"(?s)sleeper exited during start \(code 3\).*last words"
        with pytest.raises(ProcessStartError, match=expected):
            async with asyncio.timeout(5):  # far below the wait's own 30 s deadline
                await wait_listening(
                    f"{HOST}:{free_port()}",
                    name="sleeper",
                    exit_code=lambda: process.returncode,
                    log_tail=lambda: "last words",
                    timeout_seconds=30,
                )

    async def test_nobody_listening_fails_at_the_deadline_naming_the_address(self) -> None:
        address = f"{HOST}:{free_port()}"
        with pytest.raises(ProcessStartError, match=f"did not listen on {address}"):
            await wait_listening(address, name="ghost", timeout_seconds=0.3)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        return await reader.readexactly(len(payload))
    finally:
        writer.close()


class TestTcpProxy:
    """The proxy forwards, refuses (nothing listens), blackholes (accepts, never answers) and
    resumes on the same port, delivering what it held."""

    async def test_forward_refuse_blackhole_resume(self) -> None:
        echo = await asyncio.start_server(_echo, HOST, 0)
        echo_port = echo.sockets[0].getsockname()[1]
        try:
            async with running_tcp_proxy(HOST, echo_port) as proxy:
                assert await _round_trip(proxy.port, b"hello") == b"hello"
                await proxy.refuse()
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection(HOST, proxy.port)
                await proxy.blackhole()
                reader, writer = await asyncio.open_connection(HOST, proxy.port)  # accepted
                writer.write(b"held")
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await reader.readexactly(4)
                await proxy.resume()
                async with asyncio.timeout(5):
                    assert await reader.readexactly(4) == b"held"
                writer.close()
                assert await _round_trip(proxy.port, b"again") == b"again"
        finally:
            echo.close()
            await echo.wait_closed()


class TestPublicFace:
    """``testkit`` re-exports its public names, each one importable, nothing unlisted."""

    def test_every_listed_name_exists_once(self) -> None:
        assert all(hasattr(testkit, name) for name in testkit.__all__)
        assert len(set(testkit.__all__)) == len(testkit.__all__)
        public = {name for name in vars(testkit) if not name.startswith("_")}
        modules = {
            "checklist", "etcd", "etcd_cluster", "ground_truth", "inprocess_mesh",
            "ownership_monitor", "ports", "process_mesh", "sizes", "tcp_proxy", "waiting",
            "seaweedfs", "webhook_receiver", "workload",
            # Imported by their own users only (the chaos run, and what it needs).
            "chaos", "chaos_client", "chaos_faults", "private_postgres",
        }  # fmt: skip
        assert public - modules == set(testkit.__all__)

    def test_product_packages_never_import_the_kit(self) -> None:
        root = Path(__file__).resolve().parent.parent
        offenders = [
            str(path.relative_to(root))
            for package in (
                "registry",
                "node",
                "gateway",
                "client",
                "simnet",
                "telemetry",
                "protos",
            )
            for path in (root / package).rglob("*.py")
            if "testkit" in path.read_text()
        ]
        assert offenders == []
