"""The sessionmesh.v1 protos are a contract: buf lint passes, and nothing breaks the baseline.

`make lint` runs the same two commands; these tests also show that the breaking check can
fail, on a copy of the protos edited the way a careless change would edit them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent
BASELINE = ROOT / "protos" / "api-baseline.binpb"
SESSION_PROTO = Path("protos/sessionmesh/v1/session.proto")
ADMIN_PROTO = Path("protos/sessionmesh/v1/admin.proto")


def _buf_binary() -> str:
    found = BIN_DIR / "buf"
    if found.exists():
        return str(found)
    which = shutil.which("buf")
    if which is None:
        raise RuntimeError("buf not found: run `make install` (buf-bin provides it)")
    return which


def _buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_buf_binary(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _breaking(cwd: Path) -> subprocess.CompletedProcess[str]:
    return _buf("breaking", "--against", str(BASELINE), cwd=cwd)


def _edit(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old`; fail loudly if the proto no longer has it."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path.name} exactly once"
    path.write_text(text.replace(old, new))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """buf.yaml and the .proto files, copied to a temporary directory laid out like the repo."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    for proto in (ROOT / "protos").rglob("*.proto"):
        target = tmp_path / proto.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(proto, target)
    return tmp_path


class TestLint:
    """The protos pass buf's STANDARD rules, with only the exceptions buf.yaml explains."""

    def test_the_repository_passes_lint(self) -> None:
        result = _buf("lint", cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_the_exceptions_hold_only_for_session_proto(self, workspace: Path) -> None:
        _edit(
            workspace / ADMIN_PROTO,
            "rpc CheckHealth(CheckHealthRequest) returns (CheckHealthResponse);",
            "rpc CheckHealth(CheckHealthRequest) returns (CheckHealthResponse);\n"
            "  rpc GetNode(DrainNodeRequest) returns (NodeStatus);",
        )
        result = _buf("lint", cwd=workspace)
        assert result.returncode != 0
        assert 'RPC response type "NodeStatus" should be named "GetNodeResponse"' in result.stdout


class TestBaseline:
    """The protos as committed keep every promise of protos/api-baseline.binpb."""

    def test_the_repository_breaks_nothing(self) -> None:
        result = _breaking(ROOT)
        assert result.returncode == 0, result.stdout + result.stderr


class TestBreakingChanges:
    """An edit that would break existing callers fails the check, naming what it broke."""

    @pytest.mark.parametrize(
        ("old", "new", "complaint"),
        [
            pytest.param(
                "string text = 5;",
                "string text = 6;",
                'Previously present field "5" with name "text" on message "SendMessageRequest"'
                " was deleted.",
                id="field-renumbered",
            ),
            pytest.param(
                "  // Recipient (phone number or chat id).\n  string to = 4;\n",
                "",
                'Previously present field "4" with name "to" on message "SendMessageRequest"'
                " was deleted.",
                id="field-removed",
            ),
            pytest.param(
                "string to = 4;",
                "string recipient = 4;",
                # Same bytes on the wire, but JSON and the generated Python API change.
                'Field "4" on message "SendMessageRequest" changed name from "to" to "recipient".',
                id="field-renamed",
            ),
            pytest.param(
                "rpc SendMessage(SendMessageRequest)",
                "rpc PostMessage(SendMessageRequest)",
                'Previously present RPC "SendMessage" on service "SessionService" was deleted.',
                id="rpc-renamed",
            ),
        ],
    )
    def test_a_breaking_edit_fails(
        self, workspace: Path, old: str, new: str, complaint: str
    ) -> None:
        _edit(workspace / SESSION_PROTO, old, new)
        result = _breaking(workspace)
        assert result.returncode != 0
        assert complaint in result.stdout, result.stdout + result.stderr

    def test_moving_a_message_to_another_file_fails(self, workspace: Path) -> None:
        # Same wire and package, but Python callers import it from session_pb2: FILE rules.
        inbound = (
            "message InboundMessage {\n"
            "  string message_id = 1;\n"
            "  string from = 2;\n"
            "  string text = 3;\n"
            "}\n"
        )
        _edit(workspace / SESSION_PROTO, inbound, "")
        _edit(
            workspace / SESSION_PROTO,
            'import "google/protobuf/timestamp.proto";',
            'import "google/protobuf/timestamp.proto";\nimport "sessionmesh/v1/admin.proto";',
        )
        admin = workspace / ADMIN_PROTO
        admin.write_text(admin.read_text() + "\n" + inbound)
        result = _breaking(workspace)
        assert result.returncode != 0
        assert 'Previously present message "InboundMessage" was deleted from file.' in (
            result.stdout
        ), result.stdout + result.stderr


class TestCompatibleChanges:
    """An addition that existing callers never see passes the check."""

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            pytest.param(
                "string text = 5;",
                "string text = 5;\n  // The message this one answers.\n"
                "  optional string reply_to_message_id = 6;",
                id="new-optional-field",
            ),
            pytest.param(
                "MESSAGE_STATUS_FAILED = 5;",
                "MESSAGE_STATUS_FAILED = 5;\n  MESSAGE_STATUS_EXPIRED = 6;",
                id="new-enum-value",
            ),
        ],
    )
    def test_an_addition_passes(self, workspace: Path, old: str, new: str) -> None:
        _edit(workspace / SESSION_PROTO, old, new)
        result = _breaking(workspace)
        assert result.returncode == 0, result.stdout + result.stderr
