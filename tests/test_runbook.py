"""The runbook cannot rot: every ``bash runnable`` block of ``docs/operations.md`` runs, in
document order, against a real local mesh (etcd, simnet, two nodes and a gateway as
processes, tokens on), and must exit 0 under ``set -euo pipefail``; every alert's
``runbook_url`` names a heading of ``docs/operations.md``; every relative link in ``docs/``
leads to a file that exists."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from registry.auth import new_admin_token_text
from testkit import MeshSettings, ProcessMesh, free_port, running_process_mesh

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OPERATIONS = DOCS / "operations.md"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
BIN = ROOT / ".venv" / "bin"

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUNNABLE = "bash runnable"
ENVIRONMENT = "bash environment"
"""The info string of the block that exports what every runnable block reads."""
BLOCK_TIMEOUT_SECONDS = 90.0
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    info: str
    text: str
    line: int
    heading: str


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced block with its info string, first line number and the heading above it."""
    blocks: list[Block] = []
    for match in FENCE.finditer(markdown):
        before = markdown[: match.start()]
        headings = re.findall(r"^#{1,6} (.+)$", before, re.MULTILINE)
        blocks.append(
            Block(
                info=match.group(1).strip(),
                text=match.group(2),
                line=before.count("\n") + 1,
                heading=headings[-1] if headings else "",
            )
        )
    return blocks


def without_code(markdown: str) -> str:
    """``markdown`` with its fenced blocks blanked out (a ``#`` line in a shell block is no
    heading, a ``[x](y)`` in one no link)."""
    return FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), markdown)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes for a file's headings (repeats get ``-1``, ``-2``, …)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*\s*$", without_code(markdown), re.MULTILINE):
        base = slug(heading)
        seen = counts.get(base, 0)
        counts[base] = seen + 1
        found.add(base if seen == 0 else f"{base}-{seen}")
    return found


class TestRunbookLinks:
    """Every alert points at a runbook section that exists, and no doc links to nothing."""

    def test_every_runbook_url_is_a_heading_of_operations_md(self) -> None:
        rules = [
            rule
            for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]
            if "alert" in rule
        ]
        assert rules
        headings = anchors(OPERATIONS.read_text())
        for rule in rules:
            url = rule["annotations"]["runbook_url"]
            path, _, anchor = url.partition("#")
            assert path == "docs/operations.md", f"{rule['alert']}: {url}"
            assert anchor in headings, f"{rule['alert']}: no heading makes #{anchor}"
            # One section per alert, under the alert's own name.
            assert anchor == rule["alert"].lower(), f"{rule['alert']}: {url}"

    def test_every_relative_link_leads_to_a_file(self) -> None:
        pages = sorted(DOCS.glob("*.md"))
        assert {page.name for page in pages} >= {
            "operations.md",
            "monitoring.md",
            "deployment.md",
        }
        for page in pages:
            for target in LINK.findall(without_code(page.read_text())):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, …
                    continue
                path, _, anchor = target.partition("#")
                resolved = (page.parent / path).resolve() if path else page
                assert resolved.exists(), f"{page.name}: {target} leads nowhere"
                if anchor and resolved.suffix == ".md":
                    assert anchor in anchors(resolved.read_text()), (
                        f"{page.name}: {target}: no such heading"
                    )


def runnable_blocks() -> list[Block]:
    """The blocks of ``docs/operations.md`` marked to run against a local mesh."""
    return [block for block in fenced_blocks(OPERATIONS.read_text()) if block.info == RUNNABLE]


def exported_names(text: str) -> set[str]:
    """The variables a shell block exports (``export A=… B=…``)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("export "):
            names.update(re.findall(r"(?:^export |\s)([A-Z_][A-Z0-9_]*)=", line))
    return names


def runbook_environment(mesh: ProcessMesh, token: str, gateway_metrics: str) -> dict[str, str]:
    """What ``docs/operations.md``'s environment block exports, for this mesh."""
    return {
        "MESHCTL": str(BIN / "meshctl"),
        "GRPCURL": str(BIN / "grpcurl"),
        "SESSIONMESH_NODE": str(BIN / "sessionmesh-node"),
        "MESHCTL_GATEWAY": mesh.gateway_address,
        "MESHCTL_TOKEN": token,
        "ETCD_ENDPOINTS": mesh.etcd_url,
        "SESSIONMESH_CLUSTER": mesh.settings.cluster,
        "SESSION_STORAGE_PATH": str((mesh.state_dir / "sessions").resolve()),
        "DATABASE_URL": mesh.database_url,
        "SIMNET_ADDR": mesh.simnet_address,
        "SESSIONMESH_ADMIN_TOKEN_FILE": str(mesh.state_dir / "admin-token"),
        "GATEWAY_METRICS": gateway_metrics,
        "RUNBOOK_DIR": str(mesh.state_dir / "runbook"),
    }


def test_the_environment_block_exports_what_the_test_sets(tmp_path: Path) -> None:
    """The doc tells an operator to export exactly the variables this test gives the blocks."""
    blocks = [b for b in fenced_blocks(OPERATIONS.read_text()) if b.info == ENVIRONMENT]
    assert len(blocks) == 1, f"one ```{ENVIRONMENT} block expected"
    mesh = ProcessMesh(state_dir=tmp_path, settings=MeshSettings())
    assert exported_names(blocks[0].text) == set(runbook_environment(mesh, "t", "h:1"))


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on: bool) -> None:
    """Make this process adopt the orphans of its descendants (Linux ``prctl``): the nodes a
    block starts in the background outlive the block's shell, and must be reaped by someone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def runbook_pids(runbook_dir: Path) -> set[int]:
    """The node processes the runbook's blocks started (the pids in their pid files)."""
    found: set[int] = set()
    for pid_file in runbook_dir.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            found.add(int(pid_file.read_text().strip()))
    return found


def is_runbook_node(pid: int) -> bool:
    """Whether ``pid`` is still a running node (not a zombie, not a reused pid)."""
    try:
        return b"sessionmesh-node" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def stop_runbook_nodes(pids: set[int]) -> None:
    """SIGKILL the nodes the blocks started and left running (a failed block), and reap every
    one of them that this process adopted."""
    for pid in pids:
        if is_runbook_node(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        waiting -= reaped(waiting)
        if waiting:
            await asyncio.sleep(0.1)


def reaped(pids: set[int]) -> set[int]:
    """Those of ``pids`` that are no longer waiting to be reaped by this process (reaped now,
    or never its children), without blocking."""
    done: set[int] = set()
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                done.add(pid)
        except ChildProcessError:  # not ours (never adopted) or already reaped
            done.add(pid)
    return done


def log_tails(runbook_dir: Path) -> str:
    """The end of each log of the nodes the blocks started, for a failure message."""
    return "\n".join(
        f"{path.name}:\n{path.read_text(errors='replace')[-3000:]}"
        for path in sorted(runbook_dir.glob("*.log"))
    )


async def run_block(block: Block, environment: dict[str, str]) -> tuple[int, str]:
    """Run one block with bash under ``set -euo pipefail``; its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        "set -euo pipefail\n" + block.text,
        cwd=ROOT,
        env=environment,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(BLOCK_TIMEOUT_SECONDS):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        return -1, output.decode(errors="replace") + "\n(timed out)"
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.mark.timeout(420)  # about 70 s here, 120 s with the CPU taken by two busy loops
async def test_every_runnable_block_of_the_runbook_succeeds(tmp_path: Path) -> None:
    """Each ``bash runnable`` block, in order, against one local mesh with tokens on."""
    blocks = runnable_blocks()
    assert len(blocks) >= 8, "the runbook lost its runnable blocks"
    state_dir = tmp_path / "mesh"
    state_dir.mkdir()
    token = new_admin_token_text()
    (state_dir / "admin-token").write_text(token + "\n")
    gateway_metrics = f"127.0.0.1:{free_port()}"
    auth = ("--auth", "tokens", "--admin-token-file", str(state_dir / "admin-token"))
    settings = MeshSettings(
        node_count=2,
        lease_ttl_seconds=2,
        auth_flags=auth,
        extra_node_flags=("--metrics-listen", "127.0.0.1:0"),
        gateway_flags=("--metrics-listen", gateway_metrics),
        cluster="runbook",
    )
    async with running_process_mesh(state_dir, settings) as mesh:
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "LANG": "C.UTF-8",
            "COLUMNS": "200",
            # The mesh's own nodes run with a 2 s lease; so do the nodes the runbook starts.
            "LEASE_TTL_SECONDS": "2",
            **runbook_environment(mesh, token, gateway_metrics),
        }
        runbook_dir = Path(environment["RUNBOOK_DIR"])
        timings: list[str] = []
        started_nodes: set[int] = set()
        set_child_subreaper(True)
        try:
            for block in blocks:
                started = time.monotonic()
                code, output = await run_block(block, environment)
                started_nodes |= runbook_pids(runbook_dir)
                timings.append(f"{time.monotonic() - started:5.1f}s  {block.heading}")
                assert code == 0, (
                    f"docs/operations.md line {block.line} ({block.heading}) exited {code}:\n"
                    f"{block.text}\n--- output ---\n{output}\n{log_tails(runbook_dir)}"
                )
        finally:
            print("\n".join(timings))
            await stop_runbook_nodes(started_nodes | runbook_pids(runbook_dir))
            set_child_subreaper(False)
