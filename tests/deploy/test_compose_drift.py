"""docker-compose.yml and the chart run the same platform: the same services and images, the
same env names, the same ports. Compose is read generically (any service built from this
repository, or whose image is a nexus/ repository), so a service added to one and not the other
fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_testing import ROOT, Manifests

COMPOSE = ROOT / "docker-compose.yml"
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def interpolate(text: str) -> str:
    """Compose's `${VAR:-default}` as an unset VAR gives it (the default, or "")."""
    return _INTERPOLATION.sub(lambda m: m[2] if m[2] and not m[0].count("?") else "", text)


def repository(service: dict[str, Any]) -> str | None:
    """The image repository a compose service runs: its `image` without tag, else what its
    build makes (the SERVICE build argument, else the folder of its Dockerfile)."""
    if image := service.get("image"):
        repo = interpolate(str(image)).rsplit("@", 1)[0]
        repo = repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
        return repo if "nexus/" in repo else None
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return f"nexus/{Path(build).name}"
    args = build.get("args") or {}
    if isinstance(args, list):
        args = dict(a.split("=", 1) for a in args)
    if "SERVICE" in args:
        return f"nexus/{interpolate(str(args['SERVICE']))}"
    return f"nexus/{Path(build.get('dockerfile', 'Dockerfile')).parent.name}"


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, dict[str, Any]]:
    """Compose's Nexus services (name -> service), with their image repository."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {
        name: {**service, "_repository": repo}
        for name, service in services.items()
        if (repo := repository(service)) is not None
    }


def chart_env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["name"]: e for c in deployment["spec"]["template"]["spec"]["containers"] for e in c["env"]
    }


def test_the_same_services_run_from_the_same_images(
    compose: dict[str, dict[str, Any]], environments: dict[str, Manifests]
) -> None:
    deployments = environments["prod"].deployments()
    assert sorted(compose) == sorted(deployments)
    for name, deployment in deployments.items():
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.rsplit(":", 1)[0] == compose[name]["_repository"] == f"nexus/{name}"


@pytest.mark.parametrize("env", ["dev", "prod", "gpu"])
def test_every_env_name_compose_sets_the_chart_sets(
    compose: dict[str, dict[str, Any]], environments: dict[str, Manifests], env: str
) -> None:
    deployments = environments[env].deployments()
    for name, service in compose.items():
        missing = set(environment(service)) - set(chart_env(deployments[name]))
        assert not missing, (name, missing)


def test_ports_agree(
    compose: dict[str, dict[str, Any]], environments: dict[str, Manifests]
) -> None:
    deployments = environments["prod"].deployments()
    for name, service in compose.items():
        chart = chart_env(deployments[name])
        for env_name, value in environment(service).items():
            if env_name.endswith("_PORT"):
                assert chart[env_name]["value"] == value, (name, env_name)
        ports = {
            p["containerPort"]
            for p in deployments[name]["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        for published in service.get("ports", []):
            container_port = int(str(published).rsplit(":", 1)[-1].split("/")[0])
            assert container_port in ports, (name, published)


def test_the_gateway_reaches_the_same_backends_on_the_same_port(
    compose: dict[str, dict[str, Any]], environments: dict[str, Manifests]
) -> None:
    in_compose = json.loads(environment(compose["gateway"])["NEXUS_GATEWAY_BACKENDS"])
    deployments = environments["prod"].deployments()
    in_chart = json.loads(chart_env(deployments["gateway"])["NEXUS_GATEWAY_BACKENDS"]["value"])
    assert sorted(in_compose) == sorted(in_chart)
    for backend, address in in_compose.items():
        assert address.rsplit(":", 1)[1] == in_chart[backend].rsplit(":", 1)[1], backend


def test_the_orchestrator_reaches_what_the_gateway_reaches(
    compose: dict[str, dict[str, Any]],
) -> None:
    gateway = json.loads(environment(compose["gateway"])["NEXUS_GATEWAY_BACKENDS"])
    orchestrator = json.loads(environment(compose["orchestrator"])["NEXUS_ORCHESTRATOR_BACKENDS"])
    assert orchestrator == gateway
    assert "NEXUS_ORCHESTRATOR_SERVICE_KEY" in environment(compose["orchestrator"])


def test_the_reading_of_compose_follows_its_conventions() -> None:
    """How compose services are recognised: today's per-service Dockerfiles and the root
    Dockerfile with a SERVICE argument or a nexus/ image."""
    assert (
        repository({"build": {"context": ".", "dockerfile": "services/llm/Dockerfile"}})
        == "nexus/llm"
    )
    assert repository({"build": {"context": ".", "args": {"SERVICE": "llm"}}}) == "nexus/llm"
    assert repository({"build": {"context": ".", "args": ["SERVICE=anomaly"]}}) == "nexus/anomaly"
    assert (
        repository({"image": "${NEXUS_REGISTRY:-}nexus/llm:${NEXUS_TAG:-0.1.0}-cuda"})
        == "nexus/llm"
    )
    assert repository({"image": "ghcr.io/acme/nexus/gateway:1"}) == "ghcr.io/acme/nexus/gateway"
    assert repository({"image": "nats:2.10-alpine"}) is None
    assert interpolate("${A:?set A}") == ""
