"""The model registry every AI service mounts: versions, aliases and A/B splits on JetStream.

See docs/adr/0005-model-registry.md. The gRPC face is `nexus.common.registry.servicer`.
"""

from nexus.common.names import NAME_PATTERN
from nexus.common.registry._records import ARTIFACTS, BUCKET
from nexus.common.registry._registry import (
    MAX_METADATA_BYTES,
    PROMOTED_WEIGHT,
    SIGNED_FRAMEWORKS,
    STREAM,
    ChangeCallback,
    ModelRegistry,
    PreparedUpload,
    UploadHook,
)
from nexus.common.registry._signing import MAGIC
from nexus.common.registry._types import (
    DEFAULT_ALIAS,
    AliasInfo,
    ModelChange,
    ModelInfo,
    ModelVersionInfo,
    Resolved,
    Selector,
)

__all__ = [
    "ARTIFACTS",
    "BUCKET",
    "DEFAULT_ALIAS",
    "MAGIC",
    "MAX_METADATA_BYTES",
    "NAME_PATTERN",
    "PROMOTED_WEIGHT",
    "SIGNED_FRAMEWORKS",
    "STREAM",
    "AliasInfo",
    "ChangeCallback",
    "ModelChange",
    "ModelInfo",
    "ModelRegistry",
    "ModelVersionInfo",
    "PreparedUpload",
    "Resolved",
    "Selector",
    "UploadHook",
]
