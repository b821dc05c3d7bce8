"""The committed stubs are exactly what `make protos` generates from the .proto files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "sessionmesh" / "v1"


class TestGeneratedStubs:
    """Stale generated code fails the suite."""

    def test_stubs_match_the_proto_files(self, tmp_path: Path) -> None:
        target = tmp_path / "protos" / "sessionmesh" / "v1"
        target.mkdir(parents=True)
        protos = sorted(PROTO_DIR.glob("*.proto"))
        assert protos, "no .proto files found"
        for proto in protos:
            shutil.copy(proto, target / proto.name)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-I",
                ".",
                "--python_out=.",
                "--grpc_python_out=.",
                "--pyi_out=.",
                *(str(p.relative_to(ROOT)) for p in protos),
            ],
            cwd=tmp_path,
            check=True,
        )
        generated = sorted(p.name for p in target.iterdir() if p.suffix in {".py", ".pyi"})
        committed = sorted(
            p.name
            for p in PROTO_DIR.iterdir()
            if p.suffix in {".py", ".pyi"} and p.name != "__init__.py"
        )
        assert generated == committed, "run `make protos` and commit the result"
        for name in generated:
            assert (target / name).read_text() == (PROTO_DIR / name).read_text(), (
                f"{name} is stale: run `make protos` and commit the result"
            )
