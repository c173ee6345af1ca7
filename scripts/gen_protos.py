"""Regenerate libs/api (the nexus.api package) from protos/.

protoc writes `nexus/<area>/v1/*_pb2.py`; those modules would collide with the hand-written
`nexus.<area>` packages, so they move under `nexus/api/` and their imports are rewritten, as
temporalio/sdk-python's scripts/gen_protos.py does. Typed stubs come from mypy-protobuf.

Usage: python scripts/gen_protos.py [--check]
  --check: generate into a temporary folder and fail if libs/api differs (the drift check).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
TARGET = ROOT / "libs" / "api" / "src" / "nexus" / "api"
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"
BIN = Path(sys.executable).parent  # the venv's bin, where mypy-protobuf installs its plugins
IMPORT = re.compile(r"^(from|import) nexus\.(?!api\.)", re.MULTILINE)
PACKAGE_DOC = '"""Generated from protos/{path}. Do not edit: run `make protos`."""\n'


def run_protoc(out: Path) -> None:
    """Runs protoc over every .proto under protos/ into `out`."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{THIRD_PARTY}",
        f"-I{WELL_KNOWN}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    cmd = [sys.executable, "-m", *args]
    subprocess.run(cmd, check=True, cwd=PROTOS)


def relocate(generated: Path, target: Path) -> None:
    """Moves generated nexus/* under target (nexus/api/*), rewriting imports and adding inits."""
    for src in sorted((generated / "nexus").rglob("*")):
        if src.is_dir() or src.suffix not in {".py", ".pyi"}:
            continue
        dest = target / src.relative_to(generated / "nexus")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(IMPORT.sub(r"\1 nexus.api.", src.read_text()))
    for folder in [target, *sorted(p for p in target.rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        rel = folder.relative_to(target).as_posix()
        init.write_text(PACKAGE_DOC.format(path=f"nexus/{rel}" if rel != "." else "nexus"))
    (target / "py.typed").write_text("")


def generate(target: Path) -> None:
    """Generates the whole nexus.api package into `target` (replacing it)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_protoc(Path(tmp))
        if target.exists():
            shutil.rmtree(target)
        relocate(Path(tmp), target)


def differences(left: Path, right: Path) -> list[str]:
    """Paths that differ between two trees, relative to them."""
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    diffs = [*cmp.left_only, *cmp.right_only, *cmp.diff_files, *cmp.funny_files]
    for name, sub in cmp.subdirs.items():
        diffs += [f"{name}/{d}" for d in differences(Path(sub.left), Path(sub.right))]
    return diffs


def main() -> int:
    """Generates libs/api, or with --check fails on drift."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if libs/api is out of date")
    check = parser.parse_args().check
    if not check:
        generate(TARGET)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "api"
        generate(fresh)
        drift = differences(TARGET, fresh) if TARGET.exists() else ["libs/api missing"]
    for path in drift:
        print(f"drift: libs/api/src/nexus/api/{path}", file=sys.stderr)
    if drift:
        print("generated code is out of date: run `make protos` and commit", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
