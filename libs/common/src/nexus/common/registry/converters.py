"""Converters between the registry's domain types and the nexus.models.v1 protos."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.models.v1 import model_registry_pb2 as pb
from nexus.common.errors import InvalidArgument
from nexus.common.registry._types import AliasInfo, ModelInfo, ModelVersionInfo


def version_to_proto(info: ModelVersionInfo, aliases: Iterable[str] = ()) -> pb.ModelVersion:
    """A version, with the aliases that route to it."""
    return pb.ModelVersion(
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        framework=info.framework,
        metrics=dict(info.metrics),
        parameters=dict(info.parameters),
        create_time=timestamp(info.created),
        size_bytes=info.size_bytes,
        aliases=list(aliases),
        description=info.description,
    )


def alias_to_proto(info: AliasInfo) -> pb.ModelAlias:
    """An alias and its splits."""
    splits = [pb.TrafficSplit(version=version, weight=weight) for version, weight in info.splits]
    return pb.ModelAlias(alias=info.alias, splits=splits, update_time=timestamp(info.updated))


def model_to_proto(info: ModelInfo) -> pb.Model:
    """A model with its versions (oldest first) and aliases."""
    return pb.Model(
        name=info.name,
        versions=[version_to_proto(v, info.aliases_of(v.version)) for v in info.versions],
        aliases=[alias_to_proto(a) for a in info.aliases],
        latest_version=info.latest_version,
    )


def splits_from_proto(splits: Iterable[pb.TrafficSplit]) -> dict[str, int]:
    """The weights by version of a SetTrafficSplit request.

    Raises:
        InvalidArgument: When a version appears twice.
    """
    weights: dict[str, int] = {}
    for index, split in enumerate(splits):
        if split.version in weights:
            raise InvalidArgument.for_field(f"splits[{index}].version", "appears twice")
        weights[split.version] = split.weight
    return weights


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
