"""`make up` as a user runs it: real processes for etcd, simnet, two nodes and a gateway,
driven with grpcurl through the gateway, stopped cleanly with Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

from testkit import eventually, free_port, running_receiver

SERVICE = "sessionmesh.v1.SessionService"
BIN_DIR = Path(sys.executable).parent
"""Where ``make install`` put grpcurl."""


async def _meshctl(token: str, gateway: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(BIN_DIR / "meshctl"), "--token", token, *args, "--json", "--gateway", gateway,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode == 0, output
    return output.decode()


async def _grpcurl(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(BIN_DIR / "grpcurl"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def _read_until(stream: asyncio.StreamReader, marker: str, seen: list[str]) -> None:
    while True:
        line = await stream.readline()
        if not line:
            raise AssertionError("make up exited early:\n" + "".join(seen[-60:]))
        seen.append(line.decode(errors="replace"))
        if marker in seen[-1]:
            return


async def _drain(stream: asyncio.StreamReader, seen: list[str]) -> None:
    async for line in stream:
        seen.append(line.decode(errors="replace"))


class TestLocalMesh:
    """`python -m deploy.local_mesh` starts a working mesh and stops it on SIGINT."""

    async def test_up_grpcurl_and_clean_stop(self, tmp_path: Path) -> None:
        gateway_port, node_ports = free_port(), (free_port(), free_port())
        etcd_port = free_port(span=2)  # its peer port is the next one
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "deploy.local_mesh",
            "--gateway-port", str(gateway_port),
            "--node-ports", ",".join(map(str, node_ports)),
            "--simnet-port", str(free_port()),
            "--etcd-port", str(etcd_port),
            "--metrics-port", "0",
            "--state-dir", str(tmp_path / "mesh"),
            "--pair-delay-ms", "50",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        seen: list[str] = []
        pump: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(60):
                await _read_until(process.stdout, "Ctrl-C stops everything", seen)
            banner = "".join(seen[-30:])
            pump = asyncio.create_task(_drain(process.stdout, seen))
            gateway = f"127.0.0.1:{gateway_port}"
            # The banner's commands carry the demo token; meshctl's the admin token.
            demo = re.search(r"demo token\s+(smt_\S+)", banner)
            admin = re.search(r"admin token\s+(smt_\S+)", banner)
            assert demo and admin, banner
            assert f"-H 'authorization: Bearer {demo.group(1)}'" in banner
            bearer = ("-H", f"authorization: Bearer {demo.group(1)}")

            code, listed = await _grpcurl("-plaintext", gateway, "list")
            assert code == 0, listed
            assert SERVICE in listed.split()
            assert "grpc.health.v1.Health" in listed.split()

            request = {"workspace_id": "ws-1", "session_id": "s-1", "phone_number": "+1415555"}
            code, refused = await _grpcurl(
                "-plaintext", "-d", json.dumps(request), gateway, f"{SERVICE}/CreateSession"
            )
            assert code != 0 and "Unauthenticated" in refused, refused  # tokens are on
            code, created = await _grpcurl(
                "-plaintext",
                *bearer,
                "-d",
                json.dumps(request),
                gateway,
                f"{SERVICE}/CreateSession",
            )
            assert code == 0, created
            # grpcurl prints the proto field names (session_id), not the lowerCamel JSON names.
            assert json.loads(created)["session_id"] == "s-1", created

            async def ready() -> bool:
                code, got = await _grpcurl(
                    "-plaintext",
                    *bearer,
                    "-d",
                    json.dumps({"workspace_id": "ws-1", "session_id": "s-1"}),
                    gateway,
                    f"{SERVICE}/GetSession",
                )
                return code == 0 and json.loads(got).get("state") == "SESSION_STATE_READY"

            await eventually(ready, timeout_seconds=30, message="session READY via grpcurl")

            meshctl = await asyncio.create_subprocess_exec(
                str(BIN_DIR / "meshctl"), "--token", admin.group(1),
                "nodes", "--json", "--gateway", gateway,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            async with asyncio.timeout(30):
                nodes_json, _ = await meshctl.communicate()
            assert meshctl.returncode == 0, nodes_json
            assert len(json.loads(nodes_json)["nodes"]) == len(node_ports)

            # The banner's webhook lines: set one with the demo token, then a signed test.
            assert "webhook set ws-1" in banner and "webhook test ws-1" in banner
            with running_receiver() as receiver:
                shown = await _meshctl(demo.group(1), gateway, "webhook", "set", "ws-1",
                                       receiver.url)  # fmt: skip
                receiver.secrets = [json.loads(shown)["webhook"]["secret"]]
                tested = await _meshctl(demo.group(1), gateway, "webhook", "test", "ws-1")
                assert json.loads(tested)["http_status"] == 200, tested
                assert [each.verified_by for each in receiver.snapshot()] == [(0,)]

            for port in node_ports:  # every node serves reflection too
                code, listed = await _grpcurl("-plaintext", f"127.0.0.1:{port}", "list")
                assert code == 0 and SERVICE in listed.split(), listed
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                exit_code = await process.wait()
            async with asyncio.timeout(10):
                await (pump or _drain(process.stdout, seen))
        output = "".join(seen)
        assert exit_code == 0, output[-4000:]
        assert "stopped" in output
        assert "Traceback" not in output, output[-4000:]
