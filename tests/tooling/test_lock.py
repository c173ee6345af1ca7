"""The lock check (scripts/lock.py): the committed lock is complete and fresh, and a requirement
that is missing from a lock, outside its range or changed since the lock was made is reported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nexus_lock_script", ROOT / "scripts/lock.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()


def _project(path: Path, name: str, dependencies: list[str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    deps = ", ".join(f'"{d}"' for d in dependencies)
    (path / "pyproject.toml").write_text(f'[project]\nname = "{name}"\ndependencies = [{deps}]\n')


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A small workspace (a lib, a service, a template to skip) locked correctly."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "ws"\n[dependency-groups]\ndev = ["pytest>=8"]\n'
        '[tool.nexus.lock]\npins = ["numpy==2.1.0"]\n'
    )
    _project(tmp_path / "libs/common", "nexus-common", ["grpcio>=1.85,<2"])
    _project(tmp_path / "services/demo", "nexus-demo", ["nexus-common", "numpy>=1.26"])
    _project(tmp_path / "services/_template", "nexus-template", ["not-locked-anywhere"])
    _write_locks(tmp_path)
    return tmp_path


def _write_locks(root: Path) -> None:
    packages = {
        "grpcio": lock.Locked("grpcio", "1.85.3", ("a" * 64,), ()),
        "numpy": lock.Locked("numpy", "2.1.0", ("b" * 64,), ()),
        "pytest": lock.Locked("pytest", "8.4.0", ("c" * 64,), ()),
    }
    stamp = lock.digest(lock.members(root), lock.root_requirements(root))
    lock._write(root / lock.LOCK, packages.values(), stamp)
    demo = [packages["grpcio"], packages["numpy"]]
    lock._write(root / "services/demo" / lock.LOCK, demo, stamp)


def test_the_committed_lock_is_complete_and_fresh() -> None:
    assert lock.check(ROOT) == []


def test_a_correct_lock_passes_and_the_template_is_not_a_member(workspace: Path) -> None:
    assert [m.name for m in lock.members(workspace)] == ["nexus-common", "nexus-demo"]
    assert lock.check(workspace) == []


def test_a_requirement_missing_from_the_lock_is_reported(workspace: Path) -> None:
    _project(workspace / "services/demo", "nexus-demo", ["nexus-common", "numpy", "httpx>=0.27"])

    problems = lock.check(workspace)

    assert any("httpx>=0.27 is not in requirements.lock" in p for p in problems)
    assert any("made from other requirements" in p for p in problems)


def test_a_range_that_excludes_the_locked_version_is_reported(workspace: Path) -> None:
    _project(workspace / "libs/common", "nexus-common", ["grpcio>=1.90"])

    problems = lock.check(workspace)

    assert any("does not allow the locked grpcio==1.85.3" in p for p in problems)


def test_a_deployable_lock_that_disagrees_with_the_root_lock_is_reported(workspace: Path) -> None:
    path = workspace / "services/demo" / lock.LOCK
    path.write_text(path.read_text().replace("numpy==2.1.0", "numpy==2.0.0"))

    assert lock.check(workspace) == [
        "services/demo/requirements.lock: numpy==2.0.0 differs from the root requirements.lock"
    ]


def test_a_missing_lock_is_reported(workspace: Path) -> None:
    (workspace / lock.LOCK).unlink()

    assert lock.check(workspace) == ["requirements.lock is missing: run `make lock`"]


def test_a_deployable_needs_what_its_requirements_need_with_extras_and_markers() -> None:
    locked = {
        "b": lock.Locked("b", "1", (), ("c; extra == 'x'", "d; python_version < '3'")),
        "c": lock.Locked("c", "1", (), ("e",)),
        "d": lock.Locked("d", "1", (), ()),
        "e": lock.Locked("e", "1", (), ()),
        "f": lock.Locked("f", "1", (), ()),
    }
    own = {"nexus-a": lock.Member(Path("services/a"), "nexus-a", ("b[x]",), True)}

    assert lock.closure(["nexus-a"], locked, own) == {"b", "c", "e"}
    assert lock.closure(["b"], locked, own) == {"b"}
