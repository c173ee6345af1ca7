"""The helm chart (helm/nexus): lint, Kubernetes schemas, and what every environment renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_testing import (
    CHART,
    ENVIRONMENTS,
    RELEASE,
    ROOT,
    Manifests,
    helm,
    render,
    render_error,
    values_args,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
KUBERNETES = ["1.30.0", kubernetes_validate.latest_version()]
CRD_SCHEMAS = {
    "ScaledObject": Path(__file__).parent / "crds" / "scaledobject.json",
    "ServiceMonitor": Path(__file__).parent / "crds" / "servicemonitor.json",
}
SERVICES = ["gateway", "anomaly", "forecast", "llm", "orchestrator", "recommender", "vision"]
GPU_SERVICES = ("llm", "vision")
"""The services values-gpu.yaml moves to the gpu profile."""


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return spec


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for c in containers(deployment) for e in c.get("env", [])}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_lint(env: str) -> None:
    done = helm("lint", "--strict", str(CHART), *values_args(ENVIRONMENTS[env], {}, {}))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_manifests_match_the_kubernetes_schemas(
    environments: dict[str, Manifests], env: str
) -> None:
    """Core kinds against kubernetes-validate's bundled schemas (strict: unknown fields fail);
    the CRDs (KEDA, prometheus-operator) against the part of their schema that the chart uses."""
    checked = set()
    for obj in environments[env].objects:
        if obj["kind"] in CRD_SCHEMAS:
            jsonschema.validate(obj, json.loads(CRD_SCHEMAS[obj["kind"]].read_text()))
        else:
            for version in KUBERNETES:
                kubernetes_validate.validate(obj, version, strict=True)
        checked.add(obj["kind"])
    assert {"Deployment", "Service", "NetworkPolicy", "Pod"} <= checked


def test_the_crd_schemas_refuse_what_the_crds_refuse(environments: dict[str, Manifests]) -> None:
    scaled = environments["prod"].of_kind("ScaledObject")[0]
    schema = json.loads(CRD_SCHEMAS["ScaledObject"].read_text())
    typo = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 3}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)
    number = {
        **scaled,
        "spec": {**scaled["spec"], "triggers": [{"type": "x", "metadata": {"a": 1}}]},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(number, schema)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_service_has_resources_probes_and_a_locked_down_pod(
    environments: dict[str, Manifests], env: str
) -> None:
    deployments = environments[env].deployments()
    assert sorted(deployments) == sorted(SERVICES)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = containers(deployment)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert "memory" in container["resources"]["limits"], name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" in container[probe] or "httpGet" in container[probe], (name, probe)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        tmp = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"}
        assert next(v for v in pod["volumes"] if v["name"] in tmp)["emptyDir"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_probes_are_grpc_health_for_services_and_http_for_the_gateway(
    environments: dict[str, Manifests], env: str
) -> None:
    for name, deployment in environments[env].deployments().items():
        (container,) = containers(deployment)
        if name == "gateway":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        else:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert container["readinessProbe"]["grpc"]["port"] == ports["grpc"] == 50051
            assert container["livenessProbe"]["grpc"]["port"] == 50051


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pods_get_longer_to_stop_than_they_drain(
    environments: dict[str, Manifests], env: str
) -> None:
    for name, deployment in environments[env].deployments().items():
        (container,) = containers(deployment)
        grace = float(env_of(deployment)[f"NEXUS_{name.upper()}_SHUTDOWN_GRACE_S"]["value"])
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert (
            deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + grace
        )


def test_prod_scales_every_service_and_keeps_two_up(environments: dict[str, Manifests]) -> None:
    prod = environments["prod"]
    scalers = {
        prod.component(o): o
        for o in prod.of_kind("HorizontalPodAutoscaler") + prod.of_kind("ScaledObject")
    }
    assert sorted(scalers) == sorted(SERVICES)
    for name, scaler in scalers.items():
        low = scaler["spec"].get("minReplicas", scaler["spec"].get("minReplicaCount"))
        assert low >= 2, name
        assert "replicas" not in prod.deployments()[name]["spec"]  # the scaler owns it
    hpa = prod.named("HorizontalPodAutoscaler", f"{RELEASE}-nexus-gateway")
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert sorted(prod.component(p) for p in prod.of_kind("PodDisruptionBudget")) == sorted(
        SERVICES
    )


def test_prod_scales_the_anomaly_stream_on_consumer_lag(environments: dict[str, Manifests]) -> None:
    (scaled,) = environments["prod"].of_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-nexus-anomaly"
    jetstream = next(t for t in scaled["spec"]["triggers"] if t["type"] == "nats-jetstream")
    assert jetstream["metadata"]["stream"] == "METRICS"
    from nexus.anomaly.settings import AnomalySettings

    assert jetstream["metadata"]["consumer"] == AnomalySettings().stream_durable
    assert {t["type"] for t in scaled["spec"]["triggers"]} == {"nats-jetstream", "cpu", "memory"}


def test_dev_runs_one_of_each_without_scalers(environments: dict[str, Manifests]) -> None:
    dev = environments["dev"]
    assert {d["spec"]["replicas"] for d in dev.of_kind("Deployment")} == {1}
    for kind in ("HorizontalPodAutoscaler", "ScaledObject", "PodDisruptionBudget"):
        assert dev.of_kind(kind) == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_gpus_only_where_the_profile_asks(environments: dict[str, Manifests], env: str) -> None:
    for name, deployment in environments[env].deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = containers(deployment)
        gpu = env == "gpu" and name in GPU_SERVICES
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) is gpu, name
        assert container["image"].endswith("-cuda") is gpu
        assert ("runtimeClassName" in pod) is gpu
        assert any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", [])) is gpu


def test_a_service_takes_the_gpu_profile_by_values_alone() -> None:
    anomaly = render("values-dev.yaml", sets={"services.anomaly.profile": "gpu"}).deployments()[
        "anomaly"
    ]
    (container,) = containers(anomaly)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "nexus/anomaly:0.1.0-cuda"
    assert anomaly["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"services.gateway.replicas": "-1"},
            "services.gateway.replicas: Must be greater than or equal to 0",
        ),
        (
            {"services.llm.replicas": "two"},
            "services.llm.replicas: Invalid type. Expected: integer",
        ),
        ({"services.visoin.replicas": "1"}, "services: Additional property visoin is not allowed"),
        ({"services.llm.profil": "gpu"}, "Additional property profil is not allowed"),
        (
            {"services.llm.autoscaling.enabled": "yes"},
            "services.llm.autoscaling.enabled: Invalid type",
        ),
        (
            {"services.llm.secretEnv.OPENAI_API_KEY": "maybe"},
            "services.llm.secretEnv.OPENAI_API_KEY",
        ),
        (
            {"services.anomaly.autoscaling.targetCPUUtilizationPercentage": "150"},
            "less than or equal to 100",
        ),
        ({"logLevel": "LOUD"}, "logLevel"),
        ({"ports.grpc": "0"}, "ports.grpc: Must be greater than or equal to 1"),
    ],
)
def test_the_schema_refuses_bad_values_readably(sets: dict[str, str], message: str) -> None:
    assert message in render_error("values-dev.yaml", sets=sets)


def test_a_profile_that_does_not_exist_is_named() -> None:
    error = render_error("values-dev.yaml", sets={"services.llm.profile": "tpu"})
    assert 'services.llm.profile: no profile "tpu" in profiles (cpu, gpu)' in error


def test_without_the_signing_key_nothing_renders() -> None:
    error = render_error()
    assert "needs the secret NEXUS_REGISTRY_SIGNING_KEY" in error
    assert "secrets.existingSecret" in error


@pytest.mark.parametrize("service", SERVICES)
def test_changing_one_service_touches_only_its_objects(service: str) -> None:
    before = render("values-prod.yaml")
    after = render(
        "values-prod.yaml",
        sets={
            f"services.{service}.settings.max_message_bytes": "1048576",
            f"services.{service}.resources.limits.memory": "3Gi",
            f"services.{service}.autoscaling.maxReplicas": "7",
            f"services.{service}.pdb.maxUnavailable": "2",
            f"services.{service}.podAnnotations.changed": "yes",
        },
    )
    key = [(o["kind"], o["metadata"]["name"]) for o in before.objects]
    assert key == [(o["kind"], o["metadata"]["name"]) for o in after.objects]
    changed = {
        before.component(b) for b, a in zip(before.objects, after.objects, strict=True) if a != b
    }
    assert changed == {service}


def test_every_nexus_env_name_is_a_real_setting(environments: dict[str, Manifests]) -> None:
    from nexus.common.settings import NexusSettings
    from nexus.gateway.settings import GatewaySettings

    shared = {f"NEXUS_{f.upper()}" for f in NexusSettings.model_fields}
    for name, deployment in environments["gpu"].deployments().items():
        settings_class = GatewaySettings if name == "gateway" else service_settings(name)
        own = {f"NEXUS_{name.upper()}_{f.upper()}" for f in settings_class.model_fields}
        for env_name in env_of(deployment):
            if env_name.startswith("NEXUS_"):
                assert env_name in shared | own, (name, env_name)


def service_settings(name: str) -> Any:
    """The service's settings class (its settings module's ServiceSettings subclass)."""
    import importlib

    from nexus.common.settings import ServiceSettings

    module = importlib.import_module(f"nexus.{name}.settings")
    (found,) = [
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings
    ]  # fmt: skip
    return found


def test_the_gateway_is_told_every_service(environments: dict[str, Manifests]) -> None:
    deployments = environments["prod"].deployments()
    backends = json.loads(env_of(deployments["gateway"])["NEXUS_GATEWAY_BACKENDS"]["value"])
    assert backends == {
        "anomaly": f"{RELEASE}-nexus-anomaly:50051",
        "forecast": f"{RELEASE}-nexus-forecast:50051",
        "llm": f"{RELEASE}-nexus-llm:50051",
        "orchestrator": f"{RELEASE}-nexus-orchestrator:50051",
        "recommender": f"{RELEASE}-nexus-recommender:50051",
        "vision": f"{RELEASE}-nexus-vision:50051",
    }
    orchestrator = env_of(deployments["orchestrator"])["NEXUS_ORCHESTRATOR_BACKENDS"]["value"]
    assert json.loads(orchestrator) == backends
    services = {s["metadata"]["name"] for s in environments["prod"].of_kind("Service")}
    assert {address.split(":")[0] for address in backends.values()} <= services


def test_secrets_come_from_a_secret_never_from_values(environments: dict[str, Manifests]) -> None:
    for env, manifests in environments.items():
        assert manifests.of_kind("Secret") == [], env
        for deployment in manifests.of_kind("Deployment"):
            for env_name, entry in env_of(deployment).items():
                if any(word in env_name for word in ("KEY", "SECRET", "TOKEN", "PASSWORD")):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), env_name
    made = render(strings={"secrets.values.NEXUS_REGISTRY_SIGNING_KEY": "s3cret"})
    (secret,) = made.of_kind("Secret")
    assert secret["data"] == {"NEXUS_REGISTRY_SIGNING_KEY": "czNjcmV0"}


def test_the_llm_models_yaml_is_a_configmap_mounted_where_the_setting_points() -> None:
    models = "model_list:\n  - model_name: gpt\n    litellm_params: {model: openai/gpt-4o}\n"
    manifests = render("values-dev.yaml", strings={"services.llm.configFile.content": models})
    (config,) = manifests.of_kind("ConfigMap")
    assert yaml.safe_load(config["data"]["models.yaml"]) == yaml.safe_load(models)
    llm = manifests.deployments()["llm"]
    path = env_of(llm)["NEXUS_LLM_CONFIG_PATH"]["value"]
    (container,) = containers(llm)
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volumes = llm["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    assert "checksum/config" in llm["spec"]["template"]["metadata"]["annotations"]


def test_network_policies_let_only_the_gateway_reach_services_and_only_nexus_reach_nats(
    environments: dict[str, Manifests],
) -> None:
    policies = environments["prod"].of_kind("NetworkPolicy")
    for policy in policies:
        component = environments["prod"].component(policy)
        if component in ("anomaly", "forecast", "llm", "recommender", "vision"):
            rules = policy["spec"]["ingress"]
            grpc_rule = next(r for r in rules if r["ports"] == [{"port": "grpc"}])
            (peer,) = grpc_rule["from"]
            (expression,) = peer["podSelector"]["matchExpressions"]
            assert expression["values"] == ["gateway", "orchestrator"]
    nats = next(p for p in policies if p["metadata"]["name"] == f"{RELEASE}-nexus-nats")
    assert nats["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nats"}
    peers = [p["podSelector"]["matchLabels"] for p in nats["spec"]["ingress"][0]["from"]]
    assert {"app.kubernetes.io/name": "nexus", "app.kubernetes.io/instance": RELEASE} in peers


def test_metrics_are_annotated_and_monitored(environments: dict[str, Manifests]) -> None:
    prod = environments["prod"]
    for name, deployment in prod.deployments().items():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        assert (annotations.get("prometheus.io/port") == "9090") is (name != "gateway")
    assert sorted(prod.component(m) for m in prod.of_kind("ServiceMonitor")) == [
        "anomaly",
        "forecast",
        "llm",
        "orchestrator",
        "recommender",
        "vision",
    ]
    assert environments["dev"].of_kind("ServiceMonitor") == []


def test_one_value_sets_the_otlp_endpoint_everywhere() -> None:
    manifests = render("values-dev.yaml", sets={"otlpEndpoint": "http://collector:4317"})
    for deployment in manifests.of_kind("Deployment"):
        assert env_of(deployment)["NEXUS_OTLP_ENDPOINT"]["value"] == "http://collector:4317"


def test_helm_test_checks_readyz_then_one_authenticated_call(
    environments: dict[str, Manifests],
) -> None:
    (pod,) = environments["prod"].of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (ready,) = pod["spec"]["initContainers"]
    assert ready["command"][:4] == ["python", "-m", "nexus.common.probe", "http"]
    assert ready["command"][4].endswith(":8080/readyz")
    (call,) = pod["spec"]["containers"]
    assert "--bearer-env" in call["command"]
    key = {e["name"]: e for e in call["env"]}["NEXUS_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "nexus-secrets", "key": "NEXUS_GATEWAY_BOOTSTRAP_ADMIN_KEY"}


def test_the_orchestrator_calls_with_its_service_key_from_the_secret(
    environments: dict[str, Manifests],
) -> None:
    for env, manifests in environments.items():
        entry = env_of(manifests.deployments()["orchestrator"])["NEXUS_ORCHESTRATOR_SERVICE_KEY"]
        assert "value" not in entry, env
        assert entry["valueFrom"]["secretKeyRef"]["key"] == "NEXUS_ORCHESTRATOR_SERVICE_KEY", env


def test_a_registry_prefix_and_a_tag_reach_every_image() -> None:
    manifests = render(
        "values-dev.yaml",
        strings={"global.imageRegistry": "ghcr.io/acme/", "services.llm.image.tag": "9"},
    )
    images = {n: containers(d)[0]["image"] for n, d in manifests.deployments().items()}
    assert images == {
        "gateway": "ghcr.io/acme/nexus/gateway:0.1.0",
        "anomaly": "ghcr.io/acme/nexus/anomaly:0.1.0",
        "forecast": "ghcr.io/acme/nexus/forecast:0.1.0",
        "llm": "ghcr.io/acme/nexus/llm:9",
        "orchestrator": "ghcr.io/acme/nexus/orchestrator:0.1.0",
        "recommender": "ghcr.io/acme/nexus/recommender:0.1.0",
        "vision": "ghcr.io/acme/nexus/vision:0.1.0",
    }


def test_the_stack_charts_nexus_values_render_with_the_nexus_chart(tmp_path: Path) -> None:
    """CI cannot fetch the NATS chart, so the stack is not rendered; its `nexus:` values are."""
    stack = ROOT / "helm" / "nexus-stack"
    chart = yaml.safe_load((stack / "Chart.yaml").read_text())
    assert {d["name"] for d in chart["dependencies"]} == {"nexus", "nats"}
    for name in ("values.yaml", "values-prod.yaml"):
        nexus = yaml.safe_load((stack / name).read_text()).get("nexus", {})
        (tmp_path / name).write_text(yaml.safe_dump(nexus))
        done = helm("template", RELEASE, str(CHART), "-f", str(tmp_path / name))
        assert done.returncode == 0, (name, done.stderr)
