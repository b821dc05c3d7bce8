"""The alerting rules and the scrape configuration (deploy/prometheus/): promtool accepts them,
its unit tests fire and resolve every alert, every alert says what it means and where its
runbook is, and the targets file ``meshctl prometheus-targets`` writes is one Prometheus reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.meshctl_targets import file_sd_groups, write_atomically
from registry import NodeRecord

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts_test.yml"
SCRAPE_CONFIG = PROMETHEUS / "prometheus.yml"
RUNBOOK_PREFIX = "docs/operations.md#"


def promtool() -> str:
    """The promtool binary: Debian's ``prometheus`` package ships it. Absent, the test is
    skipped on a developer's machine and fails under CI, where it must be installed."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (apt-get install -y prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    """Run promtool; the completed process (the test asserts on its exit code)."""
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def rules_by_name() -> dict[str, dict[str, Any]]:
    """The alerting rules by alert name."""
    return {rule["alert"]: rule for rule in alert_rules()}


class TestPromtool:
    """promtool checks the rules and the configuration and runs the rules' unit tests."""

    def test_the_rules_are_valid(self) -> None:
        result = run_promtool("check", "rules", ALERTS.name)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout

    def test_every_alert_fires_and_resolves_in_the_unit_tests(self) -> None:
        result = run_promtool("test", "rules", ALERT_TESTS.name)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_a_broken_expectation_fails_the_unit_tests(self, tmp_path: Path) -> None:
        """The unit tests can fail: one expected summary changed, promtool says FAILED."""
        shutil.copy(ALERTS, tmp_path / ALERTS.name)
        text = ALERT_TESTS.read_text()
        broken = text.replace('summary: "node node-2 is unreachable"', 'summary: "fine"', 1)
        assert broken != text
        (tmp_path / ALERT_TESTS.name).write_text(broken)
        result = run_promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
        assert result.returncode != 0
        assert "SessionmeshInstanceDown" in result.stdout + result.stderr

    def test_the_scrape_config_and_a_generated_targets_file_are_valid(self, tmp_path: Path) -> None:
        """promtool checks the configuration, its rule file and the file_sd file that
        ``meshctl prometheus-targets`` writes (it fails on a malformed one)."""
        shutil.copy(SCRAPE_CONFIG, tmp_path / SCRAPE_CONFIG.name)
        shutil.copy(ALERTS, tmp_path / ALERTS.name)
        groups = file_sd_groups(
            [
                NodeRecord("node-1", "10.0.0.1:7001", 500, metrics_address="0.0.0.0:9101"),
                NodeRecord("node-2", "10.0.0.2:7001", 500, zone="b", metrics_address=":9101"),
            ],
            cluster="prod",
            gateways=["10.0.0.9:9100"],
        )
        write_atomically(tmp_path / "targets" / "sessionmesh.json", json.dumps(groups))
        result = run_promtool("check", "config", SCRAPE_CONFIG.name, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "WARNING" not in result.stdout + result.stderr

        (tmp_path / "targets" / "sessionmesh.json").write_text('[{"targets": "not a list"}]')
        result = run_promtool("check", "config", SCRAPE_CONFIG.name, cwd=tmp_path)
        assert result.returncode != 0


class TestEveryAlert:
    """Each alert says what it means, how bad it is, and where its runbook is."""

    def test_each_alert_has_a_summary_description_runbook_and_severity(self) -> None:
        for rule in alert_rules():
            annotations = rule.get("annotations", {})
            assert annotations.get("summary"), rule["alert"]
            assert annotations.get("description"), rule["alert"]
            assert annotations.get("runbook_url") == RUNBOOK_PREFIX + rule["alert"].lower()
            assert rule.get("labels", {}).get("severity") in {"warning", "critical"}

    def test_each_alert_is_fired_and_resolved_by_a_unit_test(self) -> None:
        """alerts_test.yml expects each alert firing at one time and gone at a later one."""
        document = yaml.safe_load(ALERT_TESTS.read_text())
        firing: dict[str, list[str]] = {}
        resolved: dict[str, list[str]] = {}
        for test in document["tests"]:
            for case in test["alert_rule_test"]:
                seen = firing if case["exp_alerts"] else resolved
                seen.setdefault(case["alertname"], []).append(case["eval_time"])
        names = set(rules_by_name())
        assert set(firing) == names
        assert set(resolved) == names
        for name in names:
            minutes = [int(time.removesuffix("m")) for time in firing[name]]
            later = [int(time.removesuffix("m")) for time in resolved[name]]
            assert max(later) > min(minutes), f"{name} is never expected to resolve"

    def test_the_checklists_four_alerts_have_its_thresholds_and_durations(self) -> None:
        rules = rules_by_name()
        assert "> 0.8" in rules["SessionmeshHighCpu"]["expr"]
        assert rules["SessionmeshHighCpu"]["for"] == "10m"
        assert "> 0.85" in rules["SessionmeshHighMemory"]["expr"]
        assert rules["SessionmeshHighMemory"]["for"] == "5m"
        assert (
            "sessionmesh_node_utilisation_ratio > 0.9"
            in (rules["SessionmeshNodeNearCapacity"]["expr"])
        )
        assert rules["SessionmeshInstanceDown"]["expr"].endswith("== 0")
        assert rules["SessionmeshInstanceDown"]["for"] == "2m"

    def test_the_targets_name_reachable_hosts_and_say_what_each_member_is(self) -> None:
        groups = file_sd_groups(
            [
                NodeRecord("node-2", "[fd00::2]:7001", 500, metrics_address="[::]:9101"),
                NodeRecord("node-1", "10.0.0.1:7001", 500, zone="a", metrics_address=":9101"),
                NodeRecord("node-3", "10.0.0.3:7001", 500),  # started without metrics
                NodeRecord("node-4", "10.0.0.4:7001", 500, metrics_address="10.1.0.4:9101"),
            ],
            cluster="prod",
            gateways=["gw:9100"],
            scheme="https",
        )
        assert groups == [
            {
                "targets": ["10.0.0.1:9101"],
                "labels": {
                    "__scheme__": "https",
                    "cluster": "prod",
                    "role": "node",
                    "member": "node-1",
                    "zone": "a",
                },
            },
            {
                "targets": ["[fd00::2]:9101"],
                "labels": {
                    "__scheme__": "https",
                    "cluster": "prod",
                    "role": "node",
                    "member": "node-2",
                },
            },
            {
                "targets": ["10.1.0.4:9101"],
                "labels": {
                    "__scheme__": "https",
                    "cluster": "prod",
                    "role": "node",
                    "member": "node-4",
                },
            },
            {
                "targets": ["gw:9100"],
                "labels": {
                    "__scheme__": "https",
                    "cluster": "prod",
                    "role": "gateway",
                    "member": "gateway@gw:9100",
                },
            },
        ]
