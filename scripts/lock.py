"""The workspace's lock: every third-party package at an exact version, with its hash.

`requirements.lock` (repository root) holds everything the workspace installs, dev tools
included; `make install` installs exactly it (`pip install --require-hashes --no-deps`), then the
workspace's own packages without dependencies. Each deployable (the gateway, every service) gets
its own `requirements.lock`, the part of the root lock it needs at run time, which its image
installs (the root Dockerfile).

Usage: python scripts/lock.py [--check]
  (no flag)  resolve the newest versions that the pyproject.toml ranges allow (pip's resolver, with
             this machine's indexes) and write the lock files.
  --check    fail when a pyproject.toml requirement is missing from the lock or outside its
             range, or when the requirements changed since the lock was written (run `make lock`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = "requirements.lock"
DEV_GROUP = "dev"
MEMBER_GLOBS = ("libs/*/pyproject.toml", "gateway/pyproject.toml", "services/*/pyproject.toml")
HEADER = (
    "# Made by `make lock` (scripts/lock.py) for CPython {python} on {platform}. Do not edit.\n"
    "# Install with: pip install --require-hashes --no-deps -r {name}\n"
    "# inputs: {digest}\n"
)


@dataclass(frozen=True)
class Member:
    """A package of the workspace: its folder, distribution name and requirements."""

    path: Path
    name: NormalizedName
    requires: tuple[str, ...]
    deployable: bool
    """Whether it runs as its own process (and so has its own lock and image)."""


@dataclass(frozen=True)
class Locked:
    """A resolved package: exact version, its hashes and its requirements."""

    name: NormalizedName
    version: str
    hashes: tuple[str, ...]
    requires: tuple[str, ...]

    def lines(self) -> str:
        """Its entry in a requirements file with hashes."""
        hashes = "".join(f" \\\n    --hash=sha256:{h}" for h in self.hashes)
        return f"{self.name}=={self.version}{hashes}\n"


def members(root: Path = ROOT) -> list[Member]:
    """The workspace's packages, found by folder (a service is one folder under services/)."""
    found = []
    for pattern in MEMBER_GLOBS:
        for path in sorted(root.glob(pattern)):
            if path.parent.name.startswith("_"):  # services/_template is a template, not a member
                continue
            project = tomllib.loads(path.read_text())["project"]
            requires = tuple(project.get("dependencies", []))
            deployable = not pattern.startswith("libs/")
            name = canonicalize_name(project["name"])
            found.append(Member(path.parent, name, requires, deployable))
    return found


def root_requirements(root: Path = ROOT) -> tuple[str, ...]:
    """The root's dev group and its `[tool.nexus.lock] pins` (the CPU build of torch, say)."""
    data = tomllib.loads((root / "pyproject.toml").read_text())
    dev = data.get("dependency-groups", {}).get(DEV_GROUP, [])
    pins = data.get("tool", {}).get("nexus", {}).get("lock", {}).get("pins", [])
    return tuple(dev) + tuple(pins)


def digest(workspace: list[Member], extra: Iterable[str]) -> str:
    """A fingerprint of every requirement the lock was made from, and of the interpreter."""
    inputs = {
        "python": platform.python_version_tuple()[:2],
        "platform": _platform(),
        "members": {m.name: sorted(m.requires) for m in workspace},
        "root": sorted(extra),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def resolve(
    workspace: list[Member], extra: Iterable[str], root: Path = ROOT
) -> dict[NormalizedName, Locked]:
    """pip's resolution of the whole workspace from scratch, as an installation report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        editables = [arg for m in workspace for arg in ("-e", str(m.path.relative_to(root)))]
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        command += ["--quiet", "--report", str(report), *editables, *extra]
        subprocess.run(command, cwd=root, check=True)
        items = json.loads(report.read_text())["install"]
    own = {m.name for m in workspace}
    locked = (_locked(item) for item in items)
    return {p.name: p for p in locked if p.name not in own}


def closure(
    requires: Iterable[str], locked: dict[NormalizedName, Locked], own: dict[NormalizedName, Member]
) -> set[NormalizedName]:
    """The locked packages that `requires` needs, transitively (markers and extras evaluated)."""
    needed: set[NormalizedName] = set()
    todo = [(Requirement(r), "") for r in requires]
    seen: set[tuple[NormalizedName, str]] = set()
    while todo:
        requirement, extra = todo.pop()
        name = canonicalize_name(requirement.name)
        if not _applies(requirement.marker, extra):
            continue
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            if name in own:
                todo += [(Requirement(r), wanted) for r in own[name].requires]
            elif name in locked:
                needed.add(name)
                todo += [(Requirement(r), wanted) for r in locked[name].requires]
    return needed


def write(root: Path = ROOT) -> None:
    """Resolves the workspace and writes the root lock and one per deployable."""
    workspace, extra = members(root), root_requirements(root)
    locked = resolve(workspace, extra, root)
    stamp = digest(workspace, extra)
    own = {m.name: m for m in workspace}
    _write(root / LOCK, locked.values(), stamp)
    for member in workspace:
        if member.deployable:
            needed = closure([member.name], locked, own)
            _write(member.path / LOCK, (locked[n] for n in needed), stamp)


def check(root: Path = ROOT) -> list[str]:
    """What is wrong with the lock files against the pyproject.toml files (empty when fine)."""
    workspace, extra = members(root), root_requirements(root)
    lock_path = root / LOCK
    if not lock_path.exists():
        return [f"{LOCK} is missing: run `make lock`"]
    pinned = read(lock_path)
    problems = list(_unmet(workspace, extra, pinned))
    if _stamp(lock_path) != digest(workspace, extra):
        problems.append(f"{LOCK} was made from other requirements: run `make lock`")
    for member in workspace:
        if member.deployable:
            problems += _inconsistent(member, pinned, root)
    return problems


def read(path: Path) -> dict[NormalizedName, str]:
    """The exact versions a lock file pins, by normalized name."""
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            name, version = line.split(" ")[0].split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _unmet(
    workspace: list[Member], extra: Iterable[str], pinned: dict[NormalizedName, str]
) -> Iterator[str]:
    own = {m.name for m in workspace}
    requirements = [(m.path.name, r) for m in workspace for r in m.requires]
    requirements += [("pyproject.toml", r) for r in extra]
    for source, text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in own or not _applies(requirement.marker, ""):
            continue
        version = pinned.get(name)
        if version is None:
            yield f"{source}: {requirement} is not in {LOCK}: run `make lock`"
        elif not requirement.specifier.contains(Version(version), prereleases=True):
            yield f"{source}: {requirement} does not allow the locked {name}=={version}"


def _inconsistent(member: Member, pinned: dict[NormalizedName, str], root: Path) -> list[str]:
    path = member.path / LOCK
    if not path.exists():
        return [f"{path.relative_to(root)} is missing: run `make lock`"]
    return [
        f"{path.relative_to(root)}: {name}=={version} differs from the root {LOCK}"
        for name, version in read(path).items()
        if pinned.get(name) != version
    ]


def _locked(item: dict[str, object]) -> Locked:
    metadata = item["metadata"]
    assert isinstance(metadata, dict)
    info = item["download_info"]
    assert isinstance(info, dict)
    archive = info.get("archive_info", {})
    hashes = archive.get("hashes") or {}
    if "sha256" not in hashes and "hash" in archive:
        hashes = dict([archive["hash"].split("=", 1)])
    return Locked(
        name=canonicalize_name(metadata["name"]),
        version=metadata["version"],
        hashes=tuple(v for k, v in hashes.items() if k == "sha256"),
        requires=tuple(metadata.get("requires_dist", [])),
    )


def _write(path: Path, packages: Iterable[Locked], stamp: str) -> None:
    header = HEADER.format(
        python=".".join(platform.python_version_tuple()[:2]),
        platform=_platform(),
        name=path.name,
        digest=stamp,
    )
    body = "".join(p.lines() for p in sorted(packages, key=lambda p: p.name))
    path.write_text(header + body)


def _stamp(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# inputs: "):
            return line.removeprefix("# inputs: ").strip()
    return ""


def _applies(marker: Marker | None, extra: str) -> bool:
    return marker is None or marker.evaluate({"extra": extra})


def _platform() -> str:
    return f"{sys.platform} {platform.machine()}"


def main() -> int:
    """Writes the lock, or checks it (exit status 1 with the problems printed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check instead of writing")
    if not parser.parse_args().check:
        write()
        return 0
    problems = check()
    for problem in problems:
        print(f"lock: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
