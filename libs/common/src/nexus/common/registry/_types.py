"""What the registry hands out: immutable versions, movable aliases, models, resolutions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

DEFAULT_ALIAS = "production"
"""The alias that `resolve` follows when the caller names none."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """One immutable version of a model.

    Attributes:
        service: The service whose registry holds it ("anomaly").
        name: The model's name.
        version: "1", "2", ... in order of registration.
        sha256: SHA-256 of the artifact, hex.
        framework: The artifact's format ("onnx", "sklearn", "nexus-anomaly").
        metrics: Validation metrics measured when it was made.
        parameters: Training parameters.
        description: Free text.
        created: When it was registered (UTC).
        size_bytes: Size of the artifact.
        call: The idempotent call that registered it ("" for none; never shown to clients):
            that call, run again, gets this version rather than registering another.
    """

    service: str
    name: str
    version: str
    sha256: str
    framework: str
    metrics: Mapping[str, float]
    parameters: Mapping[str, str]
    description: str
    created: datetime
    size_bytes: int
    call: str = ""


@dataclass(frozen=True)
class AliasInfo:
    """A movable name for one version, or for several that split its traffic by weight.

    Attributes:
        name: The model's name.
        alias: The alias ("production").
        splits: (version, weight) pairs, by version number; a share is weight / sum of weights.
        updated: When it last changed (UTC).
    """

    name: str
    alias: str
    splits: tuple[tuple[str, int], ...]
    updated: datetime

    def routes_to(self, version: str) -> bool:
        """Whether the alias sends any traffic to `version`."""
        return any(v == version and weight > 0 for v, weight in self.splits)


@dataclass(frozen=True)
class ModelInfo:
    """A model: its versions, oldest first, and its aliases, by name."""

    name: str
    versions: tuple[ModelVersionInfo, ...]
    aliases: tuple[AliasInfo, ...]

    @property
    def latest_version(self) -> str:
        """The newest version, "" when the model has none left."""
        return self.versions[-1].version if self.versions else ""

    def aliases_of(self, version: str) -> tuple[str, ...]:
        """The aliases that route traffic to `version`."""
        return tuple(a.alias for a in self.aliases if a.routes_to(version))


@dataclass(frozen=True)
class Selector:
    """What a request asks to be served by: a pinned version, else the alias's split (sticky per
    routing key); `resolve` / the runtime's `serving` take its fields."""

    alias: str = ""
    version: str = ""
    routing_key: str = ""


@dataclass(frozen=True)
class Resolved:
    """Which version serves a request, and through which alias ("" when the version was pinned)."""

    name: str
    version: str
    alias: str


@dataclass(frozen=True)
class ModelChange:
    """What `ModelRegistry.on_change` callbacks receive after the local mirror applied a change.

    Attributes:
        kind: registered | promoted | split | version_deleted | deleted.
        name: The model.
        version: The version concerned ("" for split and deleted).
        alias: The alias concerned ("" unless promoted or split).
    """

    kind: str
    name: str
    version: str = ""
    alias: str = ""
