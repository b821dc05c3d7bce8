"""What the deployment files are checked against: the repository's paths, the environment
variables each process really reads (asked of its own configuration code, not listed by hand),
the entry points pyproject.toml declares, and the tools the dev extra installs into the venv."""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import gateway.config
import node.config
import simnet.__main__

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
CONTAINERFILE = DEPLOY / "Containerfile"
COMPOSE = DEPLOY / "compose.yaml"
HEALTHCHECK_COMMAND = "sessionmesh-healthcheck"
"""deploy/healthcheck.py, which the Containerfile installs under this name."""

COMMON_VARIABLES = frozenset({"LOG_LEVEL", "LOG_FORMAT"})
"""Read by every process (simnet reads them outside its settings parser)."""


class _RecordingEnvironment(Mapping[str, str]):
    """An empty environment that remembers every name a configuration parser looked up."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _node_variables() -> frozenset[str]:
    environ = _RecordingEnvironment()
    node.config.load_config([], environ)
    return frozenset(environ.names)


def _gateway_variables() -> frozenset[str]:
    environ = _RecordingEnvironment()
    gateway.config.load_config([], environ)
    return frozenset(environ.names)


def _simnet_variables() -> frozenset[str]:
    environ = _RecordingEnvironment()
    simnet.__main__.load_settings([], environ)
    return frozenset(environ.names)


def variables_read_by(command: str) -> frozenset[str]:
    """The environment variables the process started by ``command`` reads (OTEL_* aside)."""
    readers = {
        "sessionmesh-node": _node_variables,
        "sessionmesh-gateway": _gateway_variables,
        "sessionmesh-simnet": _simnet_variables,
    }
    return readers[command]() | COMMON_VARIABLES


def is_standard_variable(name: str) -> bool:
    """OpenTelemetry's own variables, which the SDK reads (telemetry/tracing.py)."""
    return name.startswith("OTEL_")


def project() -> dict[str, Any]:
    """pyproject.toml, parsed."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def entry_points() -> dict[str, str]:
    """[project.scripts]: command → ``module:function``."""
    scripts: dict[str, str] = project()["project"]["scripts"]
    return scripts


def version() -> str:
    """The project's version (the image tag the manifests use)."""
    return str(project()["project"]["version"])


def venv_tool(name: str) -> Path:
    """A tool the dev extra installs beside this interpreter; a missing one fails the test (a
    skip would pass a check that never ran)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{path} is missing: pip install -e '.[dev]' installs it")
    return path


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of ``path``."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def port_of(address: str) -> int:
    """The port of ``host:port``."""
    match = re.fullmatch(r".*:(\d+)", address)
    assert match, f"{address!r} is not host:port"
    return int(match.group(1))
