"""One model runtime for every service: a service writes `load` and `predict`; the runtime
resolves names and aliases (A/B splits included), loads on first use (once, however many ask),
evicts by count and by memory, batches, reloads on registry changes and reports the version.

See docs/adr/0012-model-runtime.md.
"""

from nexus.common.runtime._model import Batching, Model, ModelSource, Runner
from nexus.common.runtime._runtime import ModelRuntime, ReloadCallback, Served

__all__ = [
    "Batching",
    "Model",
    "ModelRuntime",
    "ModelSource",
    "ReloadCallback",
    "Runner",
    "Served",
]
