"""The model configuration: a YAML file of deployments in litellm's `model_list` format.

```yaml
model_list:                     # litellm Router deployments; several may share a model_name
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/OPENAI_API_KEY}
  - model_name: tiny            # a local model (see local_models)
    litellm_params: {model: nexus-local/tiny}
    model_info: {input_cost_per_token: 1.0e-6, output_cost_per_token: 2.0e-6}
  - model_name: text-embedding-3-small
    litellm_params: {model: openai/text-embedding-3-small, api_key: os.environ/OPENAI_API_KEY}
    model_info: {mode: embedding, output_vector_size: 1536}
local_models:                   # Hugging Face causal LMs (safetensors) served in-process
  tiny: {path: /models/tiny}
  assistant: {registry: assistant-lm, alias: production}
router_settings: {num_retries: 2, timeout: 60, fallbacks: [{gpt-4o-mini: [tiny]}],
                  allowed_fails: 1, cooldown_time: 30}
```

Provider keys are never written here as values: `os.environ/NAME` references are resolved by
litellm when the router is built, so the key stays in the environment (or a mounted secret).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nexus.common.errors import InvalidArgument
from nexus.llm.local import LocalModelSpec

LOCAL_PREFIX = "nexus-local/"
ROUTER_SETTINGS = frozenset(
    {
        "num_retries",
        "timeout",
        "stream_timeout",
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
        "default_fallbacks",
        "max_fallbacks",
        "allowed_fails",
        "cooldown_time",
        "retry_after",
        "routing_strategy",
        "routing_strategy_args",
        "model_group_alias",
    }
)
_MODES = frozenset({"chat", "completion", "embedding"})


@dataclass(frozen=True)
class Deployment:
    """One deployment of the router.

    Attributes:
        model_name: The name requests use (several deployments may share it).
        litellm_params: litellm's parameters ("model": "<provider>/<model>", api_base, ...).
        model_info: Extra facts: mode ("chat" or "embedding"), prices, context window.
    """

    model_name: str
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """litellm's model string, "<provider>/<model>"."""
        return str(self.litellm_params["model"])

    @property
    def is_embedding(self) -> bool:
        """Whether it serves embeddings rather than chat."""
        return self.model_info.get("mode") == "embedding"

    @property
    def local_name(self) -> str:
        """The local model it runs, or "" for a remote provider."""
        return self.model.removeprefix(LOCAL_PREFIX) if self.model.startswith(LOCAL_PREFIX) else ""

    def as_litellm(self, local_model_id: Callable[[str], str]) -> dict[str, Any]:
        """The deployment in the form `litellm.Router(model_list=...)` takes; a local model's
        string is `local_model_id(name)` (it names the service's set of local models)."""
        info = {k: v for k, v in self.model_info.items() if k != "mode"}
        params = dict(self.litellm_params)
        if self.local_name:
            params["model"] = local_model_id(self.local_name)
        entry: dict[str, Any] = {"model_name": self.model_name, "litellm_params": params}
        if info:
            entry["model_info"] = info
        return entry


@dataclass(frozen=True)
class ModelsConfig:
    """What the service serves: router deployments, local models and router settings."""

    deployments: tuple[Deployment, ...] = ()
    local_models: tuple[LocalModelSpec, ...] = ()
    router_settings: dict[str, Any] = field(default_factory=dict)

    def chat_models(self) -> list[str]:
        """Names of chat model groups, sorted."""
        return sorted({d.model_name for d in self.deployments if not d.is_embedding})

    def embedding_models(self) -> list[str]:
        """Names of embedding model groups, sorted."""
        return sorted({d.model_name for d in self.deployments if d.is_embedding})

    def deployments_of(self, model_name: str) -> list[Deployment]:
        """The deployments that serve `model_name`."""
        return [d for d in self.deployments if d.model_name == model_name]


def load_config(path: Path | None) -> ModelsConfig:
    """Reads and checks the YAML configuration; None gives an empty one.

    Raises:
        InvalidArgument: The file is missing, not YAML, or not a valid configuration (the
            message names the offending entry).
    """
    if path is None:
        return ModelsConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InvalidArgument.for_field("config_path", f"cannot read {path}: {err}") from err
    return parse_config(raw, base=path.parent)


def parse_config(raw: Any, *, base: Path = Path()) -> ModelsConfig:
    """Checks a configuration already parsed from YAML; relative local paths are under `base`."""
    if not isinstance(raw, Mapping):
        raise _bad("", "the configuration must be a mapping")
    unknown = set(raw) - {"model_list", "local_models", "router_settings"}
    if unknown:
        raise _bad("", f"unknown sections: {', '.join(sorted(unknown))}")
    local = _local_models(raw.get("local_models") or {}, base)
    deployments = tuple(
        _deployment(i, entry) for i, entry in enumerate(raw.get("model_list") or [])
    )
    _check_local_references(deployments, {spec.name for spec in local})
    return ModelsConfig(deployments, local, _router_settings(raw.get("router_settings") or {}))


def _deployment(index: int, entry: Any) -> Deployment:
    where = f"model_list[{index}]"
    if not isinstance(entry, Mapping):
        raise _bad(where, "must be a mapping")
    name, params, info = (
        entry.get("model_name"),
        entry.get("litellm_params"),
        entry.get("model_info"),
    )
    if not isinstance(name, str) or not name.strip():
        raise _bad(f"{where}.model_name", "a non-empty name is required")
    if not isinstance(params, Mapping) or not isinstance(params.get("model"), str):
        raise _bad(f"{where}.litellm_params.model", "a litellm model string is required")
    if info is not None and not isinstance(info, Mapping):
        raise _bad(f"{where}.model_info", "must be a mapping")
    mode = (info or {}).get("mode", "chat")
    if mode not in _MODES:
        raise _bad(f"{where}.model_info.mode", f"{mode!r} is not one of {sorted(_MODES)}")
    return Deployment(name, dict(params), dict(info or {}))


def _local_models(raw: Any, base: Path) -> tuple[LocalModelSpec, ...]:
    if not isinstance(raw, Mapping):
        raise _bad("local_models", "must be a mapping of name -> {path | registry}")
    return tuple(_local_model(str(name), spec, base) for name, spec in raw.items())


def _local_model(name: str, spec: Any, base: Path) -> LocalModelSpec:
    where = f"local_models.{name}"
    if not isinstance(spec, Mapping):
        raise _bad(where, "must be a mapping with `path` or `registry`")
    path, registry = spec.get("path"), spec.get("registry")
    if (path is None) == (registry is None):
        raise _bad(where, "give exactly one of `path` and `registry`")
    unknown = set(spec) - {"path", "registry", "alias", "version", "context_window"}
    if unknown:
        raise _bad(where, f"unknown keys: {', '.join(sorted(unknown))}")
    return LocalModelSpec(
        name=name,
        path=(base / str(path)).resolve() if path is not None else None,
        registry_model=str(registry or ""),
        alias=str(spec.get("alias", "production")),
        version=str(spec.get("version", "")),
        context_window=int(spec.get("context_window", 0)),
    )


def _check_local_references(deployments: tuple[Deployment, ...], local: set[str]) -> None:
    for i, deployment in enumerate(deployments):
        if deployment.local_name and deployment.local_name not in local:
            raise _bad(
                f"model_list[{i}].litellm_params.model",
                f"no local model {deployment.local_name!r} under local_models",
            )


def _router_settings(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise _bad("router_settings", "must be a mapping")
    unknown = set(raw) - ROUTER_SETTINGS
    if unknown:
        raise _bad("router_settings", f"unsupported settings: {', '.join(sorted(unknown))}")
    return dict(raw)


def _bad(where: str, message: str) -> InvalidArgument:
    return InvalidArgument.for_field(f"config.{where}".rstrip("."), message)
