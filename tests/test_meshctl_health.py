"""``meshctl health --watch`` run as a real subprocess: one JSON line per check, each describing
every node as it is now (new sessions show up in a later line), a gateway that does not answer
shown and outlived, and Ctrl-C (SIGINT) ending it with exit 0."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from protos import session_pb2
from testkit import HOST, InProcessMesh, free_port, running_inprocess_mesh

ROOT = Path(__file__).resolve().parent.parent
NODE_IDS = ["node-1", "node-2"]
INTERVAL_SECONDS = 0.5
LINE_TIMEOUT_SECONDS = 15.0
"""How long one check may take to be printed (the first includes the CLI's start-up)."""
SESSIONS = [("ws-1", "s-1"), ("ws-2", "s-2"), ("ws-3", "s-3")]


@pytest.fixture
async def mesh(tmp_path: Path, etcd_url: str, cluster_name: str) -> AsyncIterator[InProcessMesh]:
    """Two real nodes behind a gateway."""
    async with running_inprocess_mesh(tmp_path, etcd_url, cluster_name, node_count=2) as running:
        yield running


class Watch:
    """A running ``meshctl health --watch --json``: its lines, one check each."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def next_check(self) -> dict[str, Any]:
        """The next line, parsed (it must be one JSON document)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(LINE_TIMEOUT_SECONDS):
            line = await self.process.stdout.readline()
        assert line, f"meshctl ended: {await self.stderr()}"
        text = line.decode()
        assert text.endswith("\n") and text.count("\n") == 1, text
        check: dict[str, Any] = json.loads(text)
        return check

    async def interrupt(self) -> int:
        """Ctrl-C: SIGINT, then its exit code."""
        self.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            return await self.process.wait()

    async def stderr(self) -> str:
        """What it wrote on stderr (once it has ended)."""
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode()


@asynccontextmanager
async def watching(gateway: str, *args: str) -> AsyncIterator[Watch]:
    """``python -m client.meshctl health --watch --json --interval 0.5`` against ``gateway``;
    killed on exit if it still runs."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.meshctl", "health",
        "--watch", "--json", "--interval", str(INTERVAL_SECONDS), *args,
        cwd=ROOT,
        env={**os.environ, "MESHCTL_GATEWAY": gateway, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Watch(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def checked_at(check: dict[str, Any]) -> datetime:
    """When the check was made (``checked_at``, UTC)."""
    text: str = check["checked_at"]
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def assert_describes_the_mesh(check: dict[str, Any], mesh: InProcessMesh) -> None:
    """``check`` is an answer of the gateway describing both nodes, reachable."""
    assert check["is_gateway_reachable"] is True, check
    assert check["error"] == ""
    assert check["gateway"] == mesh.gateway.address
    nodes = check["nodes"]
    assert [node["node_id"] for node in nodes] == NODE_IDS
    for node in nodes:
        assert node["is_reachable"] is True, node
        assert node["status"] == "SERVING"
        assert node["capacity"] == mesh.max_sessions
        assert node["address"]
        assert node["utilisation"] == pytest.approx(node["sessions"] / node["capacity"])


class TestHealthWatch:
    """``--watch --json`` prints a check per interval until Ctrl-C."""

    async def test_each_line_describes_the_nodes_as_they_are_now(self, mesh: InProcessMesh) -> None:
        async with watching(mesh.gateway.address) as watch:
            first = await watch.next_check()
            assert_describes_the_mesh(first, mesh)
            assert sum(node["sessions"] for node in first["nodes"]) == 0

            # Sessions created meanwhile show up in a later check: it is live.
            async with mesh.stub() as stub:
                for workspace_id, session_id in SESSIONS:
                    request = session_pb2.CreateSessionRequest(
                        workspace_id=workspace_id,
                        session_id=session_id,
                        phone_number="+14155550100",
                    )
                    await stub.CreateSession(request, timeout=10)
            checks = [first]
            while sum(node["sessions"] for node in checks[-1]["nodes"]) != len(SESSIONS):
                checks.append(await watch.next_check())
                assert_describes_the_mesh(checks[-1], mesh)
                assert len(checks) < 40, "the new sessions never showed up"  # 20 s of checks
            checks.append(await watch.next_check())  # one more, for the pace below
            code = await watch.interrupt()
            stderr = await watch.stderr()
        assert code == 0, stderr
        assert "Traceback" not in stderr, stderr
        times = [checked_at(check) for check in checks]
        assert times == sorted(times)
        gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
        assert all(gap >= INTERVAL_SECONDS * 0.8 for gap in gaps), gaps

    async def test_a_gateway_that_does_not_answer_is_shown_and_the_watch_goes_on(self) -> None:
        nowhere = f"{HOST}:{free_port()}"  # nothing listens there
        async with watching(nowhere) as watch:
            checks = [await watch.next_check() for _ in range(2)]
            code = await watch.interrupt()
            stderr = await watch.stderr()
        assert code == 0, stderr
        for check in checks:
            assert check["is_gateway_reachable"] is False, check
            assert check["error"].startswith("UNAVAILABLE"), check
            assert check["nodes"] == []
            assert check["gateway"] == nowhere

    async def test_without_json_it_redraws_the_table_in_place(self, mesh: InProcessMesh) -> None:
        """On a terminal (forced: FORCE_COLOR), rich's Live draws a check's table and, at the
        next check, moves the cursor back up over it and draws the new one."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client.meshctl", "health",
            "--watch", "--interval", str(INTERVAL_SECONDS),
            cwd=ROOT,
            env={
                **os.environ,
                "MESHCTL_GATEWAY": mesh.gateway.address,
                "FORCE_COLOR": "1",
                "COLUMNS": "200",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None and process.stderr is not None
        try:
            shown = ""
            answered = f"gateway {mesh.gateway.address}: answering"
            async with asyncio.timeout(LINE_TIMEOUT_SECONDS):
                while plain(shown).count(answered) < 2:
                    chunk = await process.stdout.read(4096)
                    assert chunk, (await process.stderr.read()).decode()
                    shown += chunk.decode(errors="replace")
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(10):
                rest, stderr = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, stderr.decode()
        shown += rest.decode(errors="replace")
        assert CURSOR_UP in shown  # redrawn in place, not printed again below
        last_frame = plain(shown).rsplit(answered, 1)[1]
        for node_id in NODE_IDS:
            assert node_id in last_frame
        assert "Ctrl-C to stop" in last_frame


CURSOR_UP = "\x1b[1A"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """``text`` without terminal control sequences."""
    return ANSI.sub("", text)
