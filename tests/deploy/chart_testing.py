"""The helm chart rendered with the repository's own helm (`make helm`, into .tools/), offline.

`render(*values_files, set=..., set_string=...)` runs `helm template` and returns the objects;
`render_error(...)` returns what helm said when it refused. Environments are `dev`, `prod` and
`gpu` (prod with values-gpu.yaml on top), as docs/deploy.md installs them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "nexus"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE = "t"
NAMESPACE = "nexus"
ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "dev": ("values-dev.yaml",),
    "prod": ("values-prod.yaml",),
    "gpu": ("values-prod.yaml", "values-gpu.yaml"),
}


@dataclass(frozen=True)
class Manifests:
    """The objects of one render."""

    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found

    def component(self, obj: Mapping[str, Any]) -> str | None:
        return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")

    def deployments(self) -> dict[str, dict[str, Any]]:
        """Service name -> its Deployment."""
        return {str(self.component(d)): d for d in self.of_kind("Deployment")}

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for obj in self.objects:
            counts[obj["kind"]] = counts.get(obj["kind"], 0) + 1
        return dict(sorted(counts.items()))


def helm_env() -> dict[str, str]:
    """helm's cache, config and data in the tools folder, never in the user's home."""
    home = ROOT / ".tools" / "helm-home"
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs the repository's helm; fails the test (never skips it) when it is not installed."""
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: `make helm` installs it (`make test` does it first)")
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, env=helm_env(), timeout=60, check=False
    )


def values_args(
    files: tuple[str, ...], sets: Mapping[str, str], strings: Mapping[str, str]
) -> list[str]:
    args = [arg for name in files for arg in ("-f", str(CHART / name))]
    args += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    args += [arg for key, value in strings.items() for arg in ("--set-string", f"{key}={value}")]
    return args


def template(
    *files: str, sets: Mapping[str, str] | None = None, strings: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
        *values_args(files, sets or {}, strings or {}),
    )  # fmt: skip


def render(
    *files: str, sets: Mapping[str, str] | None = None, strings: Mapping[str, str] | None = None
) -> Manifests:
    """The objects `helm template` renders with these values."""
    done = template(*files, sets=sets, strings=strings)
    assert done.returncode == 0, done.stderr
    return Manifests([o for o in yaml.safe_load_all(done.stdout) if o])


def render_error(
    *files: str, sets: Mapping[str, str] | None = None, strings: Mapping[str, str] | None = None
) -> str:
    """What helm says when it refuses these values (the test fails if it renders)."""
    done = template(*files, sets=sets, strings=strings)
    assert done.returncode != 0, f"rendered with {files} {sets} {strings}"
    return done.stderr


def render_environments() -> dict[str, Manifests]:
    """Each environment's objects."""
    return {env: render(*files) for env, files in ENVIRONMENTS.items()}
