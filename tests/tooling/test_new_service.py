"""`make service NAME=...` (scripts/new_service.py): the scaffolded service is a working one.

The template is copied into a scratch copy of the repository's contracts, its code generated,
then its own tests run there against a real NATS and a real gRPC server, and ruff passes on it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from nexus.common.testing.plugin import NatsEndpoint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"nexus_{name}", ROOT / f"scripts/{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


new_service = _load("new_service")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A scratch copy of what a scaffold touches and reads: contracts, template, tooling."""
    for folder in ("protos", "third_party", "services/_template"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/gen_protos.py", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_names_are_checked(repo: Path) -> None:
    for bad in ("Widget", "w", "my-service", "example", "9lives"):
        with pytest.raises(ValueError, match="lower-case word"):
            new_service.scaffold(bad, repo)
    new_service.scaffold("widget", repo)
    with pytest.raises(ValueError, match="exists already"):
        new_service.scaffold("widget", repo)


def test_a_scaffolded_service_is_renamed_throughout(repo: Path) -> None:
    folder = new_service.scaffold("widget", repo)

    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "src/nexus/widget/__init__.py",
        "src/nexus/widget/__main__.py",
        "src/nexus/widget/counting.py",
        "src/nexus/widget/server.py",
        "src/nexus/widget/servicer.py",
        "src/nexus/widget/settings.py",
        "tests/test_widget.py",
    ]
    text = "".join(p.read_text() for p in folder.rglob("*") if p.is_file())
    assert "example" not in text.lower()
    assert "NEXUS_WIDGET_" in text
    proto = repo / "protos/nexus/widget/v1/widget_service.proto"
    assert "package nexus.widget.v1;" in proto.read_text()


@pytest.mark.integration
def test_a_scaffolded_service_passes_its_own_tests_and_lint(
    repo: Path, nats_endpoint: NatsEndpoint
) -> None:
    new_service.scaffold("widget", repo)
    subprocess.run([sys.executable, "scripts/gen_protos.py"], cwd=repo, check=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{repo / 'libs/api/src'}:{repo / 'services/widget/src'}",
        "NEXUS_TEST_NATS_URL": nats_endpoint.url,
    }

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "services/widget"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lint = subprocess.run(
        [BIN / "ruff", "check", "services/widget"], cwd=repo, capture_output=True, text=True
    )

    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "5 passed" in tests.stdout
    assert lint.returncode == 0, lint.stdout
