"""A real Prometheus (Debian's ``prometheus``) scrapes a running process mesh through the
shipped scrape configuration (deploy/prometheus/prometheus.yml and its alerts.yml), its
targets found by file discovery from the file ``meshctl prometheus-targets`` writes from etcd.
Queried over its HTTP API: every target is ``up``, and the sessions-by-state series sum to the
sessions created through the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pytest
import yaml

from testkit import (
    MeshSettings,
    create_sessions,
    eventually,
    free_port,
    plan_sessions,
    running_process_mesh,
    wait_all_ready,
)
from testkit.ports import HOST
from tests.test_dashboards import meshctl_targets

ROOT = Path(__file__).resolve().parent.parent
DEPLOYED = ROOT / "deploy" / "prometheus"
PROMETHEUS = Path("/usr/bin/prometheus")
SCRAPE_INTERVAL = "1s"
NODE_COUNT = 2
SESSION_COUNT = 12
SESSIONS_BY_STATE = "sessionmesh_node_sessions"
"""The node's gauge of hosted sessions, labelled by ``state`` (node/metrics.py)."""
STOP_GRACE_SECONDS = 10.0


def prometheus_binary() -> Path:
    """Debian's prometheus. Absent, the test is skipped on a developer's machine and fails
    under CI, where it must be installed (``apt-get install -y prometheus``)."""
    if not PROMETHEUS.is_file():
        message = f"{PROMETHEUS} is not installed (apt-get install -y prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return PROMETHEUS


def write_config(config_dir: Path) -> Path:
    """The shipped prometheus.yml and alerts.yml, copied into ``config_dir`` with the scrape
    and rule intervals shortened to :data:`SCRAPE_INTERVAL`; the config file's path. Its file
    discovery reads ``config_dir/targets/*.json``."""
    document: dict[str, Any] = yaml.safe_load((DEPLOYED / "prometheus.yml").read_text())
    document["global"]["scrape_interval"] = SCRAPE_INTERVAL
    document["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    (jobs,) = document["scrape_configs"]
    (file_sd,) = jobs["file_sd_configs"]
    assert file_sd["files"] == ["targets/*.json"], "the test writes its targets there"
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOYED / "alerts.yml", config_dir / "alerts.yml")
    config = config_dir / "prometheus.yml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config


def spawn_prometheus(config: Path, data_dir: Path, address: str, log_path: Path) -> Popen[bytes]:
    """Start prometheus with ``config``, its TSDB in ``data_dir``, serving on ``address``,
    its output in ``log_path``."""
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return Popen(
            [
                str(prometheus_binary()),
                f"--config.file={config}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            cwd=config.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@asynccontextmanager
async def running_prometheus(config: Path, data_dir: Path) -> AsyncIterator[str]:
    """Prometheus on a free port with ``config`` and its TSDB in ``data_dir``, ready to
    answer; its base URL. Stopped (SIGTERM, then SIGKILL) on exit, whatever happens."""
    address = f"{HOST}:{free_port()}"
    log_path = data_dir.parent / "prometheus.log"
    process = spawn_prometheus(config, data_dir, address, log_path)
    base_url = f"http://{address}"
    try:

        async def ready() -> bool:
            assert process.poll() is None, f"prometheus exited: {log_path.read_text()}"
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{base_url}/-/ready")).status_code == 200

        await eventually(ready, timeout_seconds=20, interval_seconds=0.1, message="ready")
        yield base_url
    except BaseException:
        print(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(process.wait, STOP_GRACE_SECONDS)


async def instant_query(base_url: str, expr: str) -> list[dict[str, Any]]:
    """The result vector of an instant PromQL query over the HTTP API."""
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"{base_url}/api/v1/query", params={"query": expr})
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    assert body["status"] == "success", body
    assert body["data"]["resultType"] == "vector", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def active_targets(base_url: str) -> list[dict[str, Any]]:
    """Prometheus's active scrape targets (``/api/v1/targets``)."""
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"{base_url}/api/v1/targets", params={"state": "active"})
    answer.raise_for_status()
    targets: list[dict[str, Any]] = answer.json()["data"]["activeTargets"]
    return targets


class TestARealPrometheusScrapesTheMesh:
    """The shipped scrape configuration, fed by ``meshctl prometheus-targets``, works."""

    @pytest.mark.timeout(90)
    async def test_every_target_is_up_and_the_sessions_add_up(self, tmp_path: Path) -> None:
        prometheus_binary()  # skip (or fail under CI) before starting anything
        gateway_metrics = f"{HOST}:{free_port()}"
        settings = MeshSettings(
            node_count=NODE_COUNT,
            extra_node_flags=("--metrics-listen", f"{HOST}:0"),
            gateway_flags=("--metrics-listen", gateway_metrics),
        )
        config = write_config(tmp_path / "prometheus")
        data_dir = tmp_path / "prometheus-data"
        async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
            sessions = plan_sessions(workspace_count=5, session_count=SESSION_COUNT)
            await create_sessions(mesh.gateway_address, sessions)
            placed = await wait_all_ready(mesh.gateway_address, sessions, timeout_seconds=20)

            targets_file = config.parent / "targets" / "sessionmesh.json"
            await meshctl_targets(mesh, gateway_metrics, targets_file)
            members = {"node-1", "node-2", f"gateway@{gateway_metrics}"}
            cluster = mesh.settings.cluster

            async with running_prometheus(config, data_dir) as base_url:

                async def all_up() -> dict[str, float]:
                    found = {
                        sample["metric"]["member"]: float(sample["value"][1])
                        for sample in await instant_query(base_url, f'up{{cluster="{cluster}"}}')
                    }
                    assert found == dict.fromkeys(members, 1.0), found
                    return found

                up = await eventually(all_up, timeout_seconds=15, message="every target up")
                assert set(up) == members

                targets = await active_targets(base_url)
                assert {target["labels"]["member"] for target in targets} == members
                assert all(target["health"] == "up" for target in targets), targets
                assert all(target["labels"]["job"] == "sessionmesh" for target in targets)
                roles = sorted(target["labels"]["role"] for target in targets)
                assert roles == ["gateway", "node", "node"]

                async def total(expr: str) -> float:
                    (sample,) = await instant_query(base_url, expr)
                    return float(sample["value"][1])

                async def sessions_add_up() -> bool:
                    selector = f'{SESSIONS_BY_STATE}{{cluster="{cluster}"}}'
                    assert await total(f"sum({selector})") == SESSION_COUNT
                    ready = f'{SESSIONS_BY_STATE}{{cluster="{cluster}", state="ready"}}'
                    assert await total(f"sum({ready})") == SESSION_COUNT
                    return True

                await eventually(
                    sessions_add_up, timeout_seconds=10, message="sessions by state sum up"
                )
                # Each node's share is what the gateway says it hosts.
                by_node = f'sum by (node_id) ({SESSIONS_BY_STATE}{{cluster="{cluster}"}})'
                per_node = {
                    sample["metric"]["node_id"]: float(sample["value"][1])
                    for sample in await instant_query(base_url, by_node)
                    if float(sample["value"][1]) > 0
                }
                assert per_node == {
                    node_id: float(count) for node_id, count in Counter(placed.values()).items()
                }
