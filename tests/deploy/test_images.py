"""The root Dockerfile and docker-compose.yml, checked without a Docker engine.

What can run here runs for real: the Dockerfile's own shell steps that pick a deployable's files
and write its start command are executed against this repository; the rest is read from the files:
every deployable (the gateway, each folder under services/) has what the recipe takes, the build
context (.dockerignore) holds it, and compose runs each one from the recipe with the probe, read
only, on the platform's ports.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE, COMPOSE_GPU = ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"
GRPC_PORT, METRICS_PORT, HTTP_PORT = 50051, 9090, 8080
PROBE = ["CMD", "python", "-m", "nexus.common.probe"]


@dataclass(frozen=True)
class Instruction:
    """One instruction of the Dockerfile, in the stage it belongs to."""

    stage: str
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found, stage, pending = [], "", ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        if keyword == "FROM":
            stage = args.split(" AS ")[-1].strip()
        found.append(Instruction(stage, keyword, args.strip()))
        pending = ""
    return found


DOCKERFILE = instructions((ROOT / "Dockerfile").read_text())


def deployables() -> dict[str, Path]:
    """The gateway and every service (a folder under services/ with a pyproject.toml)."""
    found = {"gateway": ROOT / "gateway"}
    for project in sorted(ROOT.glob("services/[!_]*/pyproject.toml")):
        found[project.parent.name] = project.parent
    return found


def of(stage: str, keyword: str) -> list[str]:
    return [i.args for i in DOCKERFILE if i.stage == stage and i.keyword == keyword]


def env_of(stage: str) -> dict[str, str]:
    """The ENV settings of a stage (KEY=value pairs, as the Dockerfile spells them)."""
    pairs = [p for args in of(stage, "ENV") for p in shlex.split(args.replace("\\\n", " "))]
    return dict(p.split("=", 1) for p in pairs)


def run_step(
    stage: str, marker: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Runs the stage's RUN step that contains `marker`, as the build would (sh -c)."""
    (script,) = [s for s in of(stage, "RUN") if marker in s]
    return subprocess.run(
        ["sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def locked_names(lock: Path) -> set[str]:
    return {line.split("==")[0] for line in lock.read_text().splitlines() if "==" in line}


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    services = data["services"]
    assert isinstance(services, dict)
    return services


def nexus_services() -> dict[str, dict[str, Any]]:
    """The compose services built from the recipe (all but NATS)."""
    return {name: spec for name, spec in compose().items() if "build" in spec}


# -- the recipe takes each deployable's lock and packages ------------------------------------------


@pytest.mark.parametrize("name", sorted(deployables()))
def test_the_recipe_stages_each_deployables_lock_and_packages(name: str, tmp_path: Path) -> None:
    folder = deployables()[name]
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    stage = tmp_path / "stage"

    ran = run_step("sources", "requirements.lock", {"SERVICE": name, "STAGE": str(stage)}, ROOT)

    assert ran.returncode == 0, ran.stderr
    assert (stage / "requirements.lock").read_bytes() == (folder / "requirements.lock").read_bytes()
    for package, distribution in (("api", "nexus-api"), ("common", "nexus-common")):
        staged = tomllib.loads((stage / "packages" / package / "pyproject.toml").read_text())
        assert staged["project"]["name"] == distribution
    deployable = stage / "packages" / "deployable"
    assert (deployable / "pyproject.toml").read_text() == (folder / "pyproject.toml").read_text()
    assert (deployable / "src" / "nexus" / name / "__main__.py").is_file()
    assert project["name"] == f"nexus-{name}"
    assert project["entry-points"]["nexus.services"][name] == f"nexus.{name}.__main__:main"


@pytest.mark.parametrize("name", ["", "nothing", "_template", "../gateway", "Gateway", "llm x"])
def test_the_recipe_refuses_what_is_not_a_deployable(name: str, tmp_path: Path) -> None:
    ran = run_step("sources", "requirements.lock", {"SERVICE": name, "STAGE": str(tmp_path)}, ROOT)

    assert ran.returncode == 1
    assert f"SERVICE={name}: no deployable there" in ran.stderr
    assert not (tmp_path / "requirements.lock").exists()


@pytest.mark.parametrize("name", sorted(deployables()))
def test_each_deployables_lock_is_hash_checked(name: str) -> None:
    lines = (deployables()[name] / "requirements.lock").read_text().splitlines()
    entries = [i for i, line in enumerate(lines) if "==" in line and not line.startswith("#")]

    assert entries, f"{name}: an empty lock"
    for i in entries:
        assert lines[i + 1].strip().startswith("--hash=sha256:"), lines[i]
    (install,) = [s for s in of("builder", "RUN") if "requirements.lock" in s]
    assert install.count("--require-hashes") == 2  # the whole lock; all but the torch pair (CPU)


def _install(
    name: str, variant: str, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs the builder's install step for a deployable and variant with a `pip` that records
    its arguments (and the lock files it is given) instead of installing."""
    work, bin_dir = tmp_path / "tmp", tmp_path / "bin"
    work.mkdir()
    bin_dir.mkdir()
    shutil.copy(deployables()[name] / "requirements.lock", work / "requirements.lock")
    log = tmp_path / "pip.log"
    pip = bin_dir / "pip"
    pip.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        'for a in "$@"; do case "$a" in *.lock) echo "=== $a" >> ' + str(log) + "; "
        'cat "$a" >> ' + str(log) + " ;; esac; done\n"
    )
    pip.chmod(0o755)
    script = next(s for s in of("builder", "RUN") if "requirements.lock" in s)
    script = script.replace("cd /tmp", f"cd {work}")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SERVICE": name,
        "VARIANT": variant,
        "TORCH_CPU_INDEX": "https://cpu.example/whl",
    }
    ran = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    return ran, (log.read_text().splitlines() if log.exists() else [])


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_the_install_step_takes_the_right_torch_and_onnx_runtime_builds(
    variant: str, tmp_path: Path
) -> None:
    ran, calls = _install("vision", variant, tmp_path)
    lock = locked_names(deployables()["vision"] / "requirements.lock")
    installed = [c for c in calls if c.startswith("install ")]  # the pip calls, in order

    assert ran.returncode == 0, ran.stderr
    assert {"torch", "torchvision", "onnxruntime"} <= lock
    if variant == "cuda":  # the whole lock hash-checked, then the GPU build of ONNX Runtime
        assert installed[0].startswith("install --require-hashes --no-deps -r requirements.lock")
        version = next(
            line.split("==")[1].split()[0]
            for line in (deployables()["vision"] / "requirements.lock").read_text().splitlines()
            if line.startswith("onnxruntime==")
        )
        assert installed[-1] == f"install --no-deps onnxruntime-gpu=={version}"
    else:  # all but the torch pair and CUDA's libraries hash-checked, then the +cpu builds
        rest = [c for c in calls if c.startswith("=== ")]
        assert rest == ["=== rest.lock"]
        kept = {c.split("==")[0] for c in calls if "==" in c and not c.startswith(("install", "="))}
        assert not {
            n for n in kept if n in {"torch", "torchvision", "triton"} or n.startswith("nvidia-")
        }
        assert "onnxruntime" in kept
        assert installed[-1].startswith("install --no-deps --index-url https://cpu.example/whl")
        assert "torch==" in installed[-1]
        assert "+cpu" in installed[-1]
        assert not any("onnxruntime-gpu" in c for c in installed)


def test_a_service_without_torch_refuses_the_cuda_variant(tmp_path: Path) -> None:
    ran, _ = _install("gateway", "cuda", tmp_path)

    assert ran.returncode == 1
    assert "does not use torch" in ran.stderr


def test_the_recipes_stages_meet_where_the_sources_stage_puts_its_files() -> None:
    stage = env_of("sources")["STAGE"]
    copied = [args.split()[1] for args in of("builder", "COPY") if "--from=sources" in args]

    assert copied == [f"{stage}/requirements.lock", f"{stage}/packages"]
    for args in of("sources", "COPY"):
        assert (ROOT / args.split()[0]).is_dir(), args


# -- the build context -----------------------------------------------------------------------------


def _pattern(rule: str) -> re.Pattern[str]:
    """A .dockerignore rule as a regular expression (Go's filepath.Match, plus `**`)."""
    out, i = "", 0
    while i < len(rule):
        if rule.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif rule.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(rule[i], re.escape(rule[i]))
            i += 1
    return re.compile(out)


def in_context(path: str) -> bool:
    """Whether the build context holds `path`: the last rule matching it or a parent wins."""
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()]
    parts = path.split("/")
    kept = True
    for rule in (r for r in rules if r and not r.startswith("#")):
        negated = rule.startswith("!")
        pattern = _pattern(rule.lstrip("!"))
        if any(pattern.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            kept = negated
    return kept


@pytest.mark.parametrize("name", sorted(deployables()))
def test_the_build_context_holds_what_the_recipe_copies_and_no_tests(name: str) -> None:
    folders = [ROOT / "libs/api", ROOT / "libs/common", deployables()[name]]
    needed = [f / "requirements.lock" for f in folders[2:]]
    needed += [p for f in folders for p in [f / "pyproject.toml", *(f / "src").rglob("*.py")]]
    tests = [p for f in folders for p in (f / "tests").rglob("*.py")]

    assert [p for p in needed if not in_context(p.relative_to(ROOT).as_posix())] == []
    assert [p for p in tests if in_context(p.relative_to(ROOT).as_posix())] == []
    assert not in_context(".venv/bin/python")
    assert not in_context("services/_template/pyproject.toml")


# -- what runs -------------------------------------------------------------------------------------


def test_the_image_runs_as_non_root_with_every_writable_place_under_tmp() -> None:
    env = env_of("runtime")
    places = {k: v for k, v in env.items() if k.endswith(("HOME", "DIR"))}

    assert of("runtime", "USER") == ["10001:10001"]
    assert "--uid 10001" in of("runtime", "RUN")[0]
    assert [args.split()[0] for args in of("runtime", "COPY")] == ["--from=builder"]
    assert {"HOME", "XDG_CACHE_HOME", "HF_HOME", "MPLCONFIGDIR"} <= set(places)
    assert [v for v in places.values() if not v.startswith("/tmp")] == []
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert of("runtime", "CMD") == ['["nexus-serve"]']


def _start_command(service: str, tmp_path: Path) -> Path:
    """The start command the runtime stage writes for `service`, written here instead."""
    target = tmp_path / "nexus-serve"
    (script,) = [s for s in of("runtime", "RUN") if "nexus-serve" in s]
    script = script.replace("/opt/nexus/bin/nexus-serve", str(target))
    subprocess.run(["sh", "-c", script], env={"SERVICE": service}, check=True, timeout=10)
    return target


def _exported(command: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment the start command hands its service (its export lines, run by sh)."""
    exports = "".join(line + "\n" for line in command.read_text().splitlines() if "export" in line)
    shown = subprocess.run(
        ["sh", "-c", exports + "env"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in shown.splitlines() if line.startswith("NEXUS_"))


def test_the_start_command_gives_a_service_the_platforms_ports_unless_told_otherwise(
    tmp_path: Path,
) -> None:
    command = _start_command("anomaly", tmp_path)

    defaults = _exported(command, {})
    told = _exported(command, {"NEXUS_ANOMALY_GRPC_PORT": "6000"})

    assert defaults == {
        "NEXUS_ANOMALY_GRPC_HOST": "0.0.0.0",
        "NEXUS_ANOMALY_GRPC_PORT": str(GRPC_PORT),
        "NEXUS_ANOMALY_METRICS_PORT": str(METRICS_PORT),
    }
    assert told["NEXUS_ANOMALY_GRPC_PORT"] == "6000"
    assert command.read_text().splitlines()[-1] == 'exec python -m nexus.anomaly "$@"'
    gateway = _start_command("gateway", tmp_path)
    assert gateway.read_text() == '#!/bin/sh\nexec python -m nexus.gateway "$@"\n'
    assert env_of("runtime")["NEXUS_GATEWAY_PORT"] == str(HTTP_PORT)


def test_the_image_exposes_the_platforms_ports() -> None:
    (exposed,) = of("runtime", "EXPOSE")

    assert sorted(int(p) for p in exposed.split()) == sorted([GRPC_PORT, METRICS_PORT, HTTP_PORT])


# -- compose ---------------------------------------------------------------------------------------


def test_compose_runs_every_deployable_from_the_one_recipe() -> None:
    services = nexus_services()

    assert sorted(services) == sorted(deployables())
    for name, spec in services.items():
        assert spec["image"] == f"nexus/{name}:${{NEXUS_TAG:-latest}}"
        assert spec["build"] == {
            "context": ".",
            "dockerfile": "Dockerfile",
            "args": {"SERVICE": name},
        }


@pytest.mark.parametrize("name", sorted(deployables()))
def test_each_compose_service_runs_read_only_with_the_probe_on_its_port(name: str) -> None:
    spec = nexus_services()[name]
    env = spec["environment"]
    check = spec["healthcheck"]["test"]

    assert spec["read_only"] is True
    assert "/tmp" in spec["tmpfs"]
    assert "user" not in spec  # the image's uid 10001
    assert check[: len(PROBE)] == PROBE
    if name == "gateway":
        assert env["NEXUS_GATEWAY_PORT"] == str(HTTP_PORT)
        assert check[len(PROBE) :] == ["http", f"http://127.0.0.1:{HTTP_PORT}/readyz"]
        assert [p.split(":")[-1] for p in spec.get("ports", [])] == [str(HTTP_PORT)]
    else:
        prefix = f"NEXUS_{name.upper()}_"
        assert env[f"{prefix}GRPC_HOST"] == "0.0.0.0"
        assert env[f"{prefix}GRPC_PORT"] == str(GRPC_PORT)
        assert env[f"{prefix}METRICS_PORT"] == str(METRICS_PORT)
        assert check[len(PROBE) :] == ["grpc", f"127.0.0.1:{GRPC_PORT}"]
        assert spec["depends_on"]["nats"] == {"condition": "service_healthy"}


def test_the_compose_gateway_reaches_every_service_once_it_is_healthy() -> None:
    gateway = nexus_services()["gateway"]
    services = sorted(set(deployables()) - {"gateway"})
    backends = yaml.safe_load(gateway["environment"]["NEXUS_GATEWAY_BACKENDS"])

    assert backends == {name: f"{name}:{GRPC_PORT}" for name in services}
    assert gateway["depends_on"] == {n: {"condition": "service_healthy"} for n in services}


def test_the_gpu_override_takes_the_cuda_build_of_every_torch_service_and_only_those() -> None:
    gpu = compose(COMPOSE_GPU)
    torch = {
        n for n, f in deployables().items() if "torch" in locked_names(f / "requirements.lock")
    }

    assert set(gpu) == torch
    for name, spec in gpu.items():
        assert spec["image"] == nexus_services()[name]["image"] + "-cuda"
        assert spec["build"] == {"args": {"VARIANT": "cuda"}}
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
