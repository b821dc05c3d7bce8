"""The Grafana dashboards (deploy/grafana/) are what their generator writes, and every metric
named in a dashboard panel or an alert (deploy/prometheus/alerts.yml) is exported by a running
node or gateway: real processes, found by ``meshctl prometheus-targets`` from etcd, scraped
over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy.grafana import dashboards
from protos import session_pb2_grpc
from testkit import MeshSettings, ProcessMesh, free_port, running_process_mesh
from testkit.ports import HOST
from tests.calls import create

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

MADE_BY_PROMETHEUS = frozenset({"up"})
"""Series Prometheus writes itself for every target, not exported by the processes."""
PROMQL_WORDS = frozenset(
    {
        # aggregations, functions and keywords the expressions use; a new one shows up
        # as a "metric" no process exports, and fails the test until it is listed here
        "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
        "max_over_time", "min_over_time", "avg_over_time", "abs", "clamp_min", "time",
        "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
        "group_left", "group_right", "label_values",
    }
)  # fmt: skip
SUFFIXES_OF = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range windows
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(label_values\(\s*[A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1)", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", text)  # numbers
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text)) - PROMQL_WORDS


def alert_expressions() -> list[str]:
    """Every expression of alerts.yml."""
    document = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions(document: dict[str, Any]) -> list[str]:
    """Every query of a dashboard: its panels' targets and its query variables."""
    found = [
        target["expr"]
        for panel in document.get("panels", [])
        for target in panel.get("targets", [])
    ]
    for variable in document.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            found.append(variable["query"])
    return found


def committed_dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboards, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(COMMITTED.glob("*.json"))}


def exported_names(exposition: str) -> set[str]:
    """The series names a /metrics page exports, and those its declared families will (a
    labelled family without children yet has its TYPE line and no sample)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES_OF.get(family.type, ("",)))
    return names


class TestGeneratedDashboards:
    """The committed JSON is the generator's output, and the dashboards cover the checklist."""

    def test_the_committed_json_is_what_the_generator_writes(self) -> None:
        rendered = dashboards.rendered()
        committed = {path.name: path.read_text() for path in COMMITTED.glob("*.json")}
        assert sorted(committed) == sorted(rendered), "run python -m deploy.grafana.dashboards"
        for name, text in rendered.items():
            assert committed[name] == text, (
                f"{name} is stale: run python -m deploy.grafana.dashboards"
            )

    def test_the_generator_writes_every_dashboard_into_the_folder_given(
        self, tmp_path: Path
    ) -> None:
        dashboards.main(["--out", str(tmp_path)])
        written = {path.name: path.read_text() for path in tmp_path.glob("*.json")}
        assert written == dashboards.rendered()

    def test_the_dashboards_show_what_operators_asked_for(self) -> None:
        documents = committed_dashboards()
        by_uid = {document["uid"]: document for document in documents.values()}
        assert set(by_uid) == {
            "sessionmesh-fleet",
            "sessionmesh-nodes",
            "sessionmesh-rpc-latency",
            "sessionmesh-moves",
        }
        latency = " ".join(dashboard_expressions(by_uid["sessionmesh-rpc-latency"]))
        for quantile in ("0.5", "0.95", "0.99"):
            assert f"histogram_quantile({quantile}," in latency
        moves = {panel["title"] for panel in by_uid["sessionmesh-moves"]["panels"]}
        assert {"handoffs", "failovers", "fences"} <= moves
        nodes = " ".join(dashboard_expressions(by_uid["sessionmesh-nodes"]))
        assert "sessionmesh_node_sessions" in nodes
        assert "sessionmesh_node_utilisation_ratio" in nodes

    def test_every_panel_reads_the_chosen_data_source_and_cluster(self) -> None:
        for name, document in committed_dashboards().items():
            for panel in document["panels"]:
                if panel["type"] == "row":
                    continue
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert panel["targets"], f"{name}: {panel['title']} has no query"
                for target in panel["targets"]:
                    assert "$cluster" in target["expr"], f"{name}: {panel['title']}"

    def test_metric_names_are_read_from_expressions(self) -> None:
        """The name extraction the scrape test relies on."""
        expr = (
            'histogram_quantile(0.99, sum by (node_id, le) (rate(a_bucket{code=~"X|Y"}'
            "[$__rate_interval]))) / on (job) b_total > 0.5 and c == 0"
        )
        assert metric_names(expr) == {"a_bucket", "b_total", "c"}
        assert metric_names('label_values(d{cluster=~"$cluster"}, node_id)') == {"d"}


async def meshctl_targets(mesh: ProcessMesh, gateway_metrics: str, out: Path) -> str:
    """Run ``meshctl prometheus-targets`` against the mesh's etcd; what it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.meshctl", "prometheus-targets",
        "--etcd", mesh.etcd_url,
        "--cluster", mesh.settings.cluster,
        "--gateway", gateway_metrics,
        "--out", str(out),
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


def scrape(address: str) -> str:
    """The Prometheus text of ``http://address/metrics``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
    return text


class TestEveryNamedMetricIsExported:
    """A real mesh's processes export every metric the alerts and dashboards name."""

    async def test_the_targets_meshctl_writes_export_every_named_metric(
        self, tmp_path: Path
    ) -> None:
        gateway_metrics = f"{HOST}:{free_port()}"
        settings = MeshSettings(
            node_count=2,
            extra_node_flags=("--metrics-listen", f"{HOST}:0"),
            gateway_flags=("--metrics-listen", gateway_metrics),
        )
        async with running_process_mesh(tmp_path / "mesh", settings) as mesh:
            # One call through the gateway: the per-call series exist from then on.
            async with grpc.aio.insecure_channel(mesh.gateway_address) as channel:
                await create(session_pb2_grpc.SessionServiceStub(channel), "ws-1", "s-1")

            out = tmp_path / "targets" / "sessionmesh.json"
            printed = await meshctl_targets(mesh, gateway_metrics, out)
            assert f"wrote 3 targets to {out}" in printed
            groups = json.loads(out.read_text())
            members = {group["labels"]["member"]: group for group in groups}
            assert set(members) == {"node-1", "node-2", f"gateway@{gateway_metrics}"}
            records = await mesh.node_records()
            for node_id, record in records.items():
                assert members[node_id]["targets"] == [record.metrics_address]
                assert members[node_id]["labels"]["role"] == "node"
                assert members[node_id]["labels"]["cluster"] == mesh.settings.cluster

            pages = await asyncio.gather(
                *(asyncio.to_thread(scrape, group["targets"][0]) for group in groups)
            )
        exported: set[str] = set()
        for page in pages:
            exported |= exported_names(page)
        samples = {
            (sample.name, sample.labels.get("node_id", "")): sample.value
            for page in pages
            for family in text_string_to_metric_families(page)
            for sample in family.samples
        }
        # What the metrics added for the alerts say: the DB answers, the limit is a size.
        assert samples[("sessionmesh_node_accounts_db_up", "node-1")] == 1.0
        assert samples[("sessionmesh_process_memory_limit_bytes", "")] > 2**20
        # The pages are real: the node's, the gateway's and the default collector's series.
        assert {
            "sessionmesh_node_sessions",
            "sessionmesh_node_rpc_duration_seconds_bucket",
            "sessionmesh_gateway_forwarded_calls_total",
            "process_cpu_seconds_total",
        } <= exported

        named: dict[str, set[str]] = {}
        for expr in alert_expressions():
            for name in metric_names(expr):
                named.setdefault(name, set()).add("alerts.yml")
        for file_name, document in committed_dashboards().items():
            for expr in dashboard_expressions(document):
                for name in metric_names(expr):
                    named.setdefault(name, set()).add(file_name)
        assert len(named) > 20
        missing = {
            name: sorted(where)
            for name, where in named.items()
            if name not in exported and name not in MADE_BY_PROMETHEUS
        }
        assert not missing, f"named but not exported by a running node or gateway: {missing}"
