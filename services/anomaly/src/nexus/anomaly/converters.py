"""Protobuf messages <-> domain objects, in one place; the servicer only calls these."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from nexus.anomaly.datasets import CsvUpload, DatasetInfo, Table
from nexus.anomaly.detectors import Algorithm
from nexus.anomaly.engine import (
    DEFAULT_CONTAMINATION,
    DEFAULT_VALIDATION_FRACTION,
    AnomalyEngine,
    Explained,
    Scored,
    Trained,
    TrainSpec,
)
from nexus.anomaly.sources import Binding
from nexus.anomaly.streamconfig import StreamingConfig, streaming_config
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.common.v1 import common_pb2
from nexus.common.errors import InvalidArgument
from nexus.common.registry import Resolved, Selector
from nexus.common.registry.converters import version_to_proto

ALGORITHMS = {
    pb.ALGORITHM_UNSPECIFIED: Algorithm.ENSEMBLE,
    pb.ALGORITHM_ENSEMBLE: Algorithm.ENSEMBLE,
    pb.ALGORITHM_ISOLATION_FOREST: Algorithm.ISOLATION_FOREST,
    pb.ALGORITHM_ONE_CLASS_SVM: Algorithm.ONE_CLASS_SVM,
    pb.ALGORITHM_LOCAL_OUTLIER_FACTOR: Algorithm.LOCAL_OUTLIER_FACTOR,
    pb.ALGORITHM_AUTOENCODER: Algorithm.AUTOENCODER,
}


def rows_of(points: Sequence[pb.Point]) -> list[list[float]]:
    """The values of each point, as plain lists (validated by the engine)."""
    return [list(point.values) for point in points]


def upload_data(request: pb.UploadDatasetRequest, engine: AnomalyEngine) -> Table | CsvUpload:
    """What an upload carries: its CSV, or its points; exactly one of them."""
    if bool(request.csv) == bool(request.points):
        raise InvalidArgument.for_field("csv", "give either csv or points, not both or neither")
    if request.csv:
        return CsvUpload(request.csv, request.label_column)
    return _inline_table(request.points, request.feature_names, [], engine)


def _inline_table(
    points: Sequence[pb.Point], names: Sequence[str], labels: Sequence[bool], engine: AnomalyEngine
) -> Table:
    settings = engine.settings
    matrix = engine.validate_rows(rows_of(points), "points", settings.max_train_rows)
    if names and len(names) != matrix.shape[1]:
        raise InvalidArgument.for_field(
            "feature_names", f"{len(names)} names for {matrix.shape[1]} features"
        )
    if labels and len(labels) != matrix.shape[0]:
        raise InvalidArgument.for_field(
            "labels", f"{len(labels)} labels for {matrix.shape[0]} points"
        )
    y = np.asarray(labels, dtype=np.float64) if labels else None
    return Table(matrix, list(names), y)


def train_spec(request: pb.TrainDetectorRequest, engine: AnomalyEngine) -> TrainSpec:
    """A training spec from a request; inline points and dataset_id are exclusive."""
    if bool(request.points) == bool(request.dataset_id):
        raise InvalidArgument.for_field("points", "give either points or dataset_id")
    table = None
    if request.points:
        table = _inline_table(request.points, request.feature_names, request.labels, engine)
    fraction = DEFAULT_VALIDATION_FRACTION
    if request.HasField("validation_fraction"):
        fraction = request.validation_fraction
    return TrainSpec(
        name=request.name,
        algorithm=_algorithm(request.algorithm),
        table=table,
        dataset_id=request.dataset_id,
        contamination=request.contamination or DEFAULT_CONTAMINATION,
        parameters=dict(request.parameters),
        validation_fraction=_fraction(fraction),
        promote_to=request.promote_to,
        seed=request.seed,
        description=request.description,
    )


def _algorithm(value: pb.Algorithm.ValueType) -> Algorithm:
    if value not in ALGORITHMS:
        raise InvalidArgument.for_field("algorithm", f"unknown algorithm {value}")
    return ALGORITHMS[value]


def _fraction(value: float) -> float:
    if not 0 <= value < 1:
        raise InvalidArgument.for_field("validation_fraction", "must be in [0, 1)")
    return value


def selector(request: pb.ScorePointsRequest | pb.ExplainPointRequest) -> Selector:
    """Which version should serve a request."""
    return Selector(alias=request.alias, version=request.version, routing_key=request.routing_key)


def dataset_to_proto(info: DatasetInfo) -> pb.UploadDatasetResponse:
    """The response of an upload."""
    created = Timestamp()
    created.FromDatetime(info.created)
    dataset = pb.Dataset(
        id=info.id,
        name=info.name,
        rows=info.rows,
        features=info.features,
        feature_names=info.feature_names,
        sha256=info.sha256,
        create_time=created,
        has_labels=info.has_labels,
    )
    return pb.UploadDatasetResponse(dataset=dataset)


def trained_to_proto(trained: Trained) -> pb.TrainDetectorResponse:
    """The response of a training run."""
    return pb.TrainDetectorResponse(
        version=version_to_proto(trained.version), threshold=trained.threshold
    )


def model_ref(resolved: Resolved) -> common_pb2.ModelRef:
    """Which version served."""
    return common_pb2.ModelRef(name=resolved.name, version=resolved.version, alias=resolved.alias)


def scored_to_proto(points: Sequence[pb.Point], scored: Scored) -> pb.ScorePointsResponse:
    """Scores in the order of the points, with the version that served."""
    results = [
        pb.PointScore(id=point.id, score=float(score), is_anomaly=bool(flag))
        for point, score, flag in zip(points, scored.scores, scored.is_anomaly, strict=True)
    ]
    return pb.ScorePointsResponse(
        scores=results, threshold=scored.threshold, model=model_ref(scored.model)
    )


def explained_to_proto(explained: Explained) -> pb.ExplainPointResponse:
    """A point's score and its features' contributions, most contributing first."""
    contributions = [
        pb.FeatureContribution(
            index=c.index, feature=c.name, value=c.value, contribution=c.contribution
        )
        for c in explained.contributions
    ]
    return pb.ExplainPointResponse(
        score=explained.score,
        is_anomaly=explained.is_anomaly,
        threshold=explained.threshold,
        contributions=contributions,
        model=model_ref(explained.model),
    )


def binding_to_proto(binding: Binding) -> pb.SourceBinding:
    """A source binding."""
    created = Timestamp()
    created.FromDatetime(binding.created)
    reply = pb.SourceBinding(
        source=binding.source, detector=binding.detector, alias=binding.alias, create_time=created
    )
    if binding.streaming is not None:
        reply.streaming.CopyFrom(streaming_to_proto(binding.streaming))
    return reply


def streaming_of(request: pb.BindSourceRequest) -> StreamingConfig | None:
    """The validated streaming configuration a BindSource request gives, or None."""
    if not request.HasField("streaming"):
        return None
    given = request.streaming
    return streaming_config(
        given.kind,
        dict(given.parameters),
        given.threshold if given.HasField("threshold") else None,
        given.suppress if given.HasField("suppress") else None,
    )


def streaming_to_proto(config: StreamingConfig) -> pb.StreamingConfig:
    """A streaming configuration, every default filled in."""
    return pb.StreamingConfig(
        kind=config.kind,
        parameters=dict(config.params),
        threshold=config.threshold,
        suppress=config.suppress,
    )
