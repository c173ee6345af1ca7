"""Local models: Hugging Face causal language models from safetensors, run with torch, served
through litellm as the "nexus-local" provider.

`LocalModels` loads them (from a directory or from the model registry) and `register_provider`
plugs them into litellm, so that a Router deployment `{"model": "nexus-local/<name>"}` reaches
them with the Router's retries, fallbacks and cooldowns.
"""

from nexus.llm.local.archive import FRAMEWORK, pack_model_dir, unpack_model
from nexus.llm.local.model import (
    CONTEXT_WINDOW_EXCEEDED,
    DEFAULT_MAX_TOKENS,
    Generation,
    LocalModel,
    SamplingParams,
    resolve_device,
)
from nexus.llm.local.models import LocalModels, LocalModelSpec
from nexus.llm.local.provider import (
    PROVIDER,
    NexusLocalProvider,
    local_model_id,
    register_provider,
    unregister_provider,
)

__all__ = [
    "CONTEXT_WINDOW_EXCEEDED",
    "DEFAULT_MAX_TOKENS",
    "FRAMEWORK",
    "PROVIDER",
    "Generation",
    "LocalModel",
    "LocalModelSpec",
    "LocalModels",
    "NexusLocalProvider",
    "SamplingParams",
    "local_model_id",
    "pack_model_dir",
    "register_provider",
    "resolve_device",
    "unpack_model",
    "unregister_provider",
]
