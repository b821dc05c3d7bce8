"""The deployment manifests: Kubernetes (schemas, kustomize, the drain, probes, secrets),
compose (services, files, pinned images) and systemd (``systemd-analyze verify`` where it
exists, the units' keys everywhere), each held to the processes' real flags and variables."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from tests.deploy_contract import (
    COMPOSE,
    DEPLOY,
    HEALTHCHECK_COMMAND,
    KUBERNETES,
    SYSTEMD,
    entry_points,
    is_standard_variable,
    load_yaml_documents,
    port_of,
    variables_read_by,
    venv_tool,
    version,
)

KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
"""The oldest release the manifests promise to work on, and the newest schema bundled."""
SESSION_SERVICE = "sessionmesh.v1.SessionService"
Resource = dict[str, Any]


def _render() -> list[Resource]:
    result = subprocess.run(
        [str(venv_tool("kubectl")), "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module")
def rendered() -> list[Resource]:
    """``kubectl kustomize deploy/kubernetes``, parsed."""
    return _render()


def _one(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(workload: Resource) -> Resource:
    containers: list[Resource] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _environment(resources: list[Resource], container: Resource) -> dict[str, str]:
    """The container's environment: its ConfigMaps' data, then its own ``env`` (values, or a
    marker naming where a ``valueFrom`` takes it)."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = _one(resources, "ConfigMap", source["configMapRef"]["name"])
        environment.update(config_map["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:
            environment[variable["name"]] = f"<from {next(iter(variable['valueFrom']))}>"
    return environment


def _mount_of(workload: Resource, path: str) -> tuple[Resource, Resource]:
    """The volume mount holding ``path`` in the workload's container, and its volume."""
    for mount in _container(workload).get("volumeMounts", []):
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volumes = workload["spec"]["template"]["spec"]["volumes"]
            volume = next(v for v in volumes if v["name"] == mount["name"])
            return mount, volume
    raise AssertionError(f"nothing mounted at {path}")


class TestKubernetesSchemas:
    """Every manifest validates against the Kubernetes schemas, and kustomize renders them."""

    def test_every_file_is_in_the_kustomization(self) -> None:
        kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
        listed = set(kustomization["resources"])
        present = {
            path.name for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml"
        }
        assert present == listed, "a manifest not in the kustomization is never applied"
        for name in listed:
            assert (KUBERNETES / name).is_file(), name

    def test_kustomize_renders_everything(self, rendered: list[Resource]) -> None:
        kinds = {(r["kind"], r["metadata"]["name"]) for r in rendered}
        for expected in [
            ("StatefulSet", "sessionmesh-node"),
            ("Deployment", "sessionmesh-gateway"),
            ("Service", "sessionmesh-gateway"),
            ("Service", "sessionmesh-node"),
            ("PodDisruptionBudget", "sessionmesh-node"),
            ("StatefulSet", "etcd"),
            ("PersistentVolumeClaim", "sessionmesh-sessions"),
        ]:
            assert expected in kinds
        for resource in rendered:
            if resource["kind"] != "Namespace":
                assert resource["metadata"]["namespace"] == "sessionmesh", resource["kind"]

    @pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
    def test_rendered_manifests_validate_strictly(
        self, rendered: list[Resource], kubernetes_version: str
    ) -> None:
        for resource in rendered:
            kubernetes_validate.validate(resource, kubernetes_version, strict=True)

    @pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
    def test_each_file_validates_strictly(self, kubernetes_version: str) -> None:
        for path in sorted(KUBERNETES.glob("*.yaml")):
            if path.name == "kustomization.yaml":
                continue
            for resource in load_yaml_documents(path):
                kubernetes_validate.validate(resource, kubernetes_version, strict=True)

    def test_the_validator_catches_a_misspelt_field(self, rendered: list[Resource]) -> None:
        """The check above is not vacuous: one typo in a probe is an error."""
        node = copy.deepcopy(_one(rendered, "StatefulSet", "sessionmesh-node"))
        container = _container(node)
        container["readinessProbes"] = container.pop("readinessProbe")
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(node, KUBERNETES_VERSIONS[-1], strict=True)


class TestNodes:
    """Nodes: a StatefulSet whose pod names are node ids, on shared storage, drained on stop."""

    def test_node_id_is_the_pod_name(self, rendered: list[Resource]) -> None:
        node = _one(rendered, "StatefulSet", "sessionmesh-node")
        env = {variable["name"]: variable for variable in _container(node)["env"]}
        assert env["NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        advertise = env["NODE_ADVERTISE"]["value"]
        service = node["spec"]["serviceName"]
        assert advertise.startswith(f"$(NODE_ID).{service}."), advertise
        headless = _one(rendered, "Service", service)
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["publishNotReadyAddresses"] is True

    def test_session_storage_is_one_read_write_many_claim(self, rendered: list[Resource]) -> None:
        node = _one(rendered, "StatefulSet", "sessionmesh-node")
        environment = _environment(rendered, _container(node))
        mount, volume = _mount_of(node, environment["SESSION_STORAGE_PATH"])
        claim = _one(
            rendered, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]
        )
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert not mount.get("readOnly", False)
        assert "volumeClaimTemplates" not in node["spec"], "one shared volume, not one per pod"

    def test_grace_period_outlasts_the_drain(self, rendered: list[Resource]) -> None:
        node = _one(rendered, "StatefulSet", "sessionmesh-node")
        container = _container(node)
        environment = _environment(rendered, container)
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        drain_seconds = float(environment["SHUTDOWN_GRACE_SECONDS"])
        grace_seconds = node["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace_seconds >= float(pre_stop[1]) + drain_seconds + 10

    def test_disruption_budget_covers_the_nodes(self, rendered: list[Resource]) -> None:
        node = _one(rendered, "StatefulSet", "sessionmesh-node")
        budget = _one(rendered, "PodDisruptionBudget", "sessionmesh-node")
        assert budget["spec"]["maxUnavailable"] == 1
        labels = node["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


class TestProbesAndServices:
    """gRPC health probes on the ports the processes listen on; the gateway's Service."""

    @pytest.mark.parametrize(
        ("kind", "name", "listen_variable"),
        [
            ("StatefulSet", "sessionmesh-node", "NODE_LISTEN"),
            ("Deployment", "sessionmesh-gateway", "GATEWAY_LISTEN"),
        ],
    )
    def test_probes_check_grpc_health(
        self, rendered: list[Resource], kind: str, name: str, listen_variable: str
    ) -> None:
        workload = _one(rendered, kind, name)
        container = _container(workload)
        port = port_of(_environment(rendered, container)[listen_variable])
        assert port in {p["containerPort"] for p in container["ports"]}
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container[probe_name]["exec"]["command"]
            assert command[0] == HEALTHCHECK_COMMAND, probe_name
            assert port_of(command[1]) == port, probe_name
        # Readiness asks for the session service: the one a node or gateway turns off.
        assert container["readinessProbe"]["exec"]["command"][2:] == [SESSION_SERVICE]
        assert container["livenessProbe"]["exec"]["command"][2:] == []

    def test_gateway_service_selects_the_gateway(self, rendered: list[Resource]) -> None:
        gateway = _one(rendered, "Deployment", "sessionmesh-gateway")
        service = _one(rendered, "Service", "sessionmesh-gateway")
        labels = gateway["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        named_ports = {p["name"]: p["containerPort"] for p in _container(gateway)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named_ports

    @pytest.mark.parametrize(
        ("kind", "name"),
        [("StatefulSet", "sessionmesh-node"), ("Deployment", "sessionmesh-gateway")],
    )
    def test_scrape_annotations_name_the_metrics_port(
        self, rendered: list[Resource], kind: str, name: str
    ) -> None:
        workload = _one(rendered, kind, name)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        metrics_listen = _environment(rendered, _container(workload))["METRICS_LISTEN"]
        assert int(annotations["prometheus.io/port"]) == port_of(metrics_listen)
        ports = {p["containerPort"] for p in _container(workload)["ports"]}
        assert port_of(metrics_listen) in ports


class TestSecretsAndConfiguration:
    """TLS and the admin token come from Secrets; every variable set is one the process reads."""

    @pytest.mark.parametrize(
        ("kind", "name"),
        [("StatefulSet", "sessionmesh-node"), ("Deployment", "sessionmesh-gateway")],
    )
    def test_tls_and_admin_token_are_mounted_secrets(
        self, rendered: list[Resource], kind: str, name: str
    ) -> None:
        workload = _one(rendered, kind, name)
        environment = _environment(rendered, _container(workload))
        for variable in (
            "SESSIONMESH_TLS_CERT",
            "SESSIONMESH_TLS_KEY",
            "SESSIONMESH_TLS_CA",
            "SESSIONMESH_ADMIN_TOKEN_FILE",
        ):
            path = environment[variable]
            mount, volume = _mount_of(workload, path)
            assert mount.get("readOnly") is True, variable
            secret = volume["secret"]
            relative = path.removeprefix(mount["mountPath"].rstrip("/") + "/")
            if "items" in secret:
                assert relative in {item["path"] for item in secret["items"]}, variable

    @pytest.mark.parametrize(
        ("kind", "name", "command"),
        [
            ("StatefulSet", "sessionmesh-node", "sessionmesh-node"),
            ("Deployment", "sessionmesh-gateway", "sessionmesh-gateway"),
            ("Deployment", "sessionmesh-simnet", "sessionmesh-simnet"),
        ],
    )
    def test_every_variable_is_one_the_process_reads(
        self, rendered: list[Resource], kind: str, name: str, command: str
    ) -> None:
        container = _container(_one(rendered, kind, name))
        assert container["command"] == [command]
        assert command in entry_points()
        readable = variables_read_by(command) | {"POD_NAMESPACE"}  # for $(…) only
        unknown = {
            variable
            for variable in _environment(rendered, container)
            if variable not in readable and not is_standard_variable(variable)
        }
        assert not unknown, f"{name} sets variables {command} never reads: {sorted(unknown)}"

    def test_etcd_endpoints_name_every_member(self, rendered: list[Resource]) -> None:
        etcd = _one(rendered, "StatefulSet", "etcd")
        assert etcd["spec"]["replicas"] == 3
        service = etcd["spec"]["serviceName"]
        endpoints = _one(rendered, "ConfigMap", "sessionmesh-config")["data"]["ETCD_ENDPOINTS"]
        expected = [f"http://etcd-{index}.{service}:2379" for index in range(3)]
        assert endpoints.split(",") == expected

    def test_images_are_the_project_version(self, rendered: list[Resource]) -> None:
        for resource in rendered:
            if resource["kind"] in ("StatefulSet", "Deployment"):
                image = _container(resource)["image"]
                name, _, tag = image.rpartition(":")
                assert tag and tag != "latest", image
                if name.endswith("sessionmesh"):
                    assert tag == version(), image


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def _command_of(service: Resource) -> str:
    command = service.get("command", [])
    return str(command[0]) if command else ""


class TestCompose:
    """deploy/compose.yaml: the one-host trial."""

    def test_it_has_every_part_of_the_trial(self) -> None:
        services = _compose()["services"]
        for name in ["etcd-1", "etcd-2", "etcd-3", "postgres", "node-1", "node-2", "node-3"]:
            assert name in services
        for name in ["gateway", "prometheus", "grafana", "jaeger", "simnet"]:
            assert name in services
        nodes = [s for s in services.values() if _command_of(s) == "sessionmesh-node"]
        assert len(nodes) == 3
        assert len({node["environment"]["NODE_ID"] for node in nodes}) == 3

    def test_images_are_pinned(self) -> None:
        for name, service in _compose()["services"].items():
            image = service["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag, f"{name}: {image} has no tag"
            assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
            if repository == "sessionmesh":
                assert tag == version(), name

    def test_every_referenced_file_exists(self) -> None:
        compose = _compose()
        named = set(compose.get("volumes", {}))
        for name, service in compose["services"].items():
            build = service.get("build")
            if build:
                context = (COMPOSE.parent / build["context"]).resolve()
                assert (context / build["dockerfile"]).is_file(), name
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith((".", "/")):
                    assert (COMPOSE.parent / source).exists(), f"{name}: {source} is missing"
                else:
                    assert source in named, f"{name}: volume {source} is not declared"
            for dependency in service.get("depends_on", {}):
                assert dependency in compose["services"], f"{name} depends on {dependency}"

    def test_prometheus_reads_the_mounted_configuration(self) -> None:
        prometheus = _compose()["services"]["prometheus"]
        config = next(a for a in prometheus["command"] if a.startswith("--config.file="))
        target = config.removeprefix("--config.file=")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
        assert target in mounts
        assert (COMPOSE.parent / mounts[target]).is_file()
        # The rule files it names are mounted beside it.
        configuration = yaml.safe_load((COMPOSE.parent / mounts[target]).read_text())
        folder = str(Path(target).parent)
        for rule_file in configuration.get("rule_files", []):
            assert f"{folder}/{rule_file}" in mounts, rule_file

    def test_sessionmesh_services_set_only_variables_they_read(self) -> None:
        for name, service in _compose()["services"].items():
            command = _command_of(service)
            if command not in ("sessionmesh-node", "sessionmesh-gateway", "sessionmesh-simnet"):
                continue
            readable = variables_read_by(command)
            unknown = {
                variable
                for variable in service.get("environment", {})
                if variable not in readable and not is_standard_variable(variable)
            }
            assert not unknown, f"{name}: {sorted(unknown)}"

    def test_nodes_reach_the_three_etcd_members_and_advertise_their_name(self) -> None:
        services = _compose()["services"]
        for name, service in services.items():
            if _command_of(service) != "sessionmesh-node":
                continue
            environment = service["environment"]
            members = [
                url.removeprefix("http://") for url in environment["ETCD_ENDPOINTS"].split(",")
            ]
            assert sorted(member.split(":")[0] for member in members) == [
                "etcd-1",
                "etcd-2",
                "etcd-3",
            ]
            assert environment["NODE_ADVERTISE"].split(":")[0] == name
            assert {"etcd-1", "etcd-2", "etcd-3", "migrate"} <= set(service["depends_on"])

    def test_grafana_provisioning_matches_the_mounts(self) -> None:
        grafana = _compose()["services"]["grafana"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
        provisioning = DEPLOY / "grafana" / "provisioning"
        providers = yaml.safe_load((provisioning / "dashboards" / "sessionmesh.yaml").read_text())
        for provider in providers["providers"]:
            path = provider["options"]["path"]
            assert mounts[path] == "./grafana/dashboards", path
        home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
        assert (COMPOSE.parent / mounts[str(home.parent)] / home.name).is_file(), home
        datasources = yaml.safe_load(
            (provisioning / "datasources" / "sessionmesh.yaml").read_text()
        )
        services = _compose()["services"]
        for datasource in datasources["datasources"]:
            host = re.sub(r"^https?://", "", datasource["url"]).split(":")[0]
            assert host in services, datasource["name"]


def _unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as sections of (key, value) in order (systemd allows repeated keys, which
    configparser does not)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
            continue
        assignment = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)\s*=\s*(.*)", line)
        assert assignment and current is not None, f"{path.name}:{number}: {raw!r}"
        current.append((assignment.group(1), assignment.group(2)))
    return sections


def _values(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for name, value in sections.get(section, []) if name == key]


def _environment_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines, commented-out examples (``#NAME=value``) included."""
    return dict(re.findall(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", path.read_text(), flags=re.M))


UNITS = {
    "sessionmesh-node@.service": "sessionmesh-node",
    "sessionmesh-gateway.service": "sessionmesh-gateway",
}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "CapabilityBoundingSet": "",
}


class TestSystemd:
    """The units: hardened, a dedicated user, a stop that outlasts the drain; verified by
    systemd itself where it is installed."""

    @pytest.mark.parametrize(("unit", "command"), sorted(UNITS.items()))
    def test_unit_has_the_required_keys(self, unit: str, command: str) -> None:
        sections = _unit_sections(SYSTEMD / unit)
        assert _values(sections, "Unit", "Description")
        assert _values(sections, "Install", "WantedBy") == ["multi-user.target"]
        exec_start = _values(sections, "Service", "ExecStart")
        assert len(exec_start) == 1
        assert Path(exec_start[0].split()[0]).name == command
        assert command in entry_points()
        assert _values(sections, "Service", "User") == ["sessionmesh"]
        assert _values(sections, "Service", "KillSignal") == ["SIGTERM"]
        for key, value in HARDENING.items():
            assert _values(sections, "Service", key) == [value], key
        for environment_file in _values(sections, "Service", "EnvironmentFile"):
            name = Path(environment_file.lstrip("-")).name
            if "%" not in name:
                assert (SYSTEMD / name).is_file(), f"{name}: no example in deploy/systemd"

    def test_node_storage_is_writable_and_the_stop_outlasts_the_drain(self) -> None:
        sections = _unit_sections(SYSTEMD / "sessionmesh-node@.service")
        node_environment = _environment_file(SYSTEMD / "node.env")
        storage = node_environment["SESSION_STORAGE_PATH"]
        writable = " ".join(_values(sections, "Service", "ReadWritePaths")).split()
        assert any(storage == path or storage.startswith(path + "/") for path in writable)
        assert _values(sections, "Service", "Environment")[0] == "NODE_ID=%i"
        timeout = float(_values(sections, "Service", "TimeoutStopSec")[0])
        assert timeout >= float(node_environment["SHUTDOWN_GRACE_SECONDS"]) + 10

    @pytest.mark.parametrize(
        ("environment_file", "commands"),
        [
            ("sessionmesh.env", ("sessionmesh-node", "sessionmesh-gateway")),
            ("node.env", ("sessionmesh-node",)),
            ("node-example.env", ("sessionmesh-node",)),
            ("gateway.env", ("sessionmesh-gateway",)),
        ],
    )
    def test_environment_files_set_only_variables_the_processes_read(
        self, environment_file: str, commands: tuple[str, ...]
    ) -> None:
        for name in _environment_file(SYSTEMD / environment_file):
            if is_standard_variable(name):
                continue
            for command in commands:
                assert name in variables_read_by(command), f"{environment_file}: {name}"

    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        """Where systemd is installed it checks the units itself (ExecStart pointed at this
        checkout's entry points, which it requires to exist); elsewhere the parse above is the
        check, and this says it did not run."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed: the units were only parsed")
        bin_folder = venv_tool("sessionmesh-node").parent
        paths = []
        for unit in UNITS:
            text = (SYSTEMD / unit).read_text().replace("/opt/sessionmesh/bin/", f"{bin_folder}/")
            name = unit.replace("@.", "@node-a.")  # verify wants an instance of a template
            (tmp_path / name).write_text(text)
            paths.append(str(tmp_path / name))
        result = subprocess.run(
            [analyze, "verify", *paths], capture_output=True, text=True, timeout=60, check=False
        )
        # verify exits 0 on unknown keys and bad values, only warning: any output is a failure.
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr


BACKUP_VARIABLES = frozenset({"BACKUP_TARGET", "BACKUP_KEY_FILE"})
"""What ``meshctl backup`` reads besides the node's storage, DB and etcd settings (and boto3's
own AWS_* variables)."""


class TestBackupSchedule:
    """The hourly backup: a hardened oneshot unit and its timer, verified by systemd itself
    where it is installed, and a Kubernetes CronJob."""

    def test_the_unit_runs_meshctl_backup_hourly(self) -> None:
        service = _unit_sections(SYSTEMD / "sessionmesh-backup.service")
        timer = _unit_sections(SYSTEMD / "sessionmesh-backup.timer")
        assert _values(service, "Service", "Type") == ["oneshot"]
        exec_start = _values(service, "Service", "ExecStart")[0].split()
        assert Path(exec_start[0]).name == "meshctl" and exec_start[1] == "backup"
        assert "meshctl" in entry_points()
        assert _values(service, "Service", "User") == ["sessionmesh"]
        for key, value in HARDENING.items():
            assert _values(service, "Service", key) == [value], key
        assert _values(timer, "Timer", "OnCalendar") == ["hourly"]
        assert _values(timer, "Timer", "Persistent") == ["true"]
        assert _values(timer, "Timer", "Unit") == ["sessionmesh-backup.service"]
        for environment_file in _values(service, "Service", "EnvironmentFile"):
            assert (SYSTEMD / Path(environment_file).name).is_file(), environment_file
        for name in _environment_file(SYSTEMD / "backup.env"):
            assert name in BACKUP_VARIABLES or name.startswith("AWS_"), name

    def test_systemd_analyze_verifies_the_unit_and_the_timer(self, tmp_path: Path) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed: the units were only parsed")
        bin_folder = venv_tool("meshctl").parent
        for unit in ("sessionmesh-backup.service", "sessionmesh-backup.timer"):
            text = (SYSTEMD / unit).read_text().replace("/opt/sessionmesh/bin/", f"{bin_folder}/")
            (tmp_path / unit).write_text(text)
        result = subprocess.run(
            [analyze, "verify", str(tmp_path / "sessionmesh-backup.timer")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr

    def test_the_cronjob_runs_meshctl_backup_with_the_storage_read_only(
        self, rendered: list[Resource]
    ) -> None:
        job = next(r for r in rendered if r["kind"] == "CronJob")
        spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["command"][:2] == ["meshctl", "backup"]
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["sessions"]["readOnly"] is True
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims["sessions"] == "sessionmesh-sessions"
        names = {entry["name"] for entry in container["env"]}
        assert names >= BACKUP_VARIABLES
