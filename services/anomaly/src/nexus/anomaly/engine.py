"""The anomaly service's work, free of gRPC: datasets, training, scoring, explaining.

CPU-heavy steps (fitting, scoring) run on the service's executor, never on the event loop.
Trained models are stored in the model registry as signed pickles and served by the model
runtime (`nexus.common.runtime`): loaded on first use, evicted least recently used beyond the
cache limits, reloaded when any replica changes the registry, and concurrent scoring requests of
one version are merged into one matrix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from nexus.anomaly.datasets import CsvUpload, DatasetInfo, DatasetStore, Table, parse_csv
from nexus.anomaly.detectors import (
    Algorithm,
    AnomalyModel,
    FeatureContribution,
    validate_matrix,
    validate_point,
)
from nexus.anomaly.serving import FRAMEWORK, ServedDetector
from nexus.anomaly.settings import AnomalySettings
from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.common.operations import NO_PROGRESS, Progress
from nexus.common.registry import ModelRegistry, ModelVersionInfo, Resolved, Selector
from nexus.common.runtime import Batching, ModelRuntime, Served

DEFAULT_CONTAMINATION = 0.1
DEFAULT_VALIDATION_FRACTION = 0.2
MIN_VALIDATION_ROWS = 10

T = TypeVar("T")


@dataclass(frozen=True)
class TrainSpec:
    """What to train: the data (inline table or a dataset id) and how."""

    name: str
    algorithm: Algorithm = Algorithm.ENSEMBLE
    table: Table | None = None
    dataset_id: str = ""
    contamination: float = DEFAULT_CONTAMINATION
    parameters: Mapping[str, str] = field(default_factory=dict)
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    promote_to: str = ""
    seed: int = 0
    description: str = ""


@dataclass(frozen=True)
class Trained:
    """A registered version and its threshold."""

    version: ModelVersionInfo
    threshold: float


@dataclass(frozen=True)
class Scored:
    """Scores of a batch, and the version that served it."""

    scores: np.ndarray
    is_anomaly: np.ndarray
    threshold: float
    model: Resolved


@dataclass(frozen=True)
class Explained:
    """One point's score and what drove it."""

    score: float
    is_anomaly: bool
    threshold: float
    contributions: list[FeatureContribution]
    model: Resolved


class AnomalyEngine:
    """Datasets, training and scoring, over the registry, the model runtime and the service's
    executor."""

    def __init__(
        self,
        registry: ModelRegistry,
        datasets: DatasetStore,
        settings: AnomalySettings,
        executor: Executor,
    ) -> None:
        self.registry = registry
        self.datasets = datasets
        self.settings = settings
        self._executor = executor
        batching = Batching(settings.batch_max_size, settings.batch_max_wait_ms)
        self.models = ModelRuntime(
            registry,
            lambda source: ServedDetector(source, batching),
            executor=executor,
            max_models=settings.model_cache_size,
            max_bytes=settings.model_cache_bytes,
            frameworks=[FRAMEWORK],
        )

    async def start(self) -> None:
        """Starts the dataset store and follows registry changes to keep served models loaded."""
        await self.datasets.start()
        await self.models.start()

    async def warm(self) -> None:
        """Loads the versions the aliases route to, within the cache limits (before SERVING)."""
        await self.models.warm()

    async def stop(self) -> None:
        """Flushes the batchers and lets go of the loaded models."""
        await self.models.stop()

    async def upload_dataset(self, name: str, data: Table | CsvUpload) -> DatasetInfo:
        """Stores a table (or CSV, parsed on a worker thread) for later training."""
        table = data if isinstance(data, Table) else await self._run(lambda: self._parse(data))
        return await self.datasets.put(name, table)

    def _parse(self, upload: CsvUpload) -> Table:
        limit = self.settings.max_dataset_bytes
        if len(upload.data) > limit:
            raise ResourceExhausted.too_large("csv (bytes)", len(upload.data), limit)
        return parse_csv(
            upload.data,
            label_column=upload.label_column,
            max_rows=self.settings.max_train_rows,
            max_features=self.settings.max_features,
        )

    async def train(self, spec: TrainSpec, progress: Progress = NO_PROGRESS) -> Trained:
        """Trains a detector, registers it with its validation metrics, optionally promotes it.

        Reports its stages to `progress` (loading, fitting, validating, registering); a cancel
        takes effect before registering, so a cancelled training registers nothing. Run again as
        the same idempotent call (an operation's rerun), it finds the version already registered.
        """
        await progress.stage("loading", 0.0, "reading the training data")
        table = spec.table if spec.table is not None else await self.datasets.get(spec.dataset_id)
        _check_training_rows(table, self.settings.max_train_rows)
        train_rows, val_rows = _split(len(table.X), spec.validation_fraction, spec.seed)
        await progress.stage("fitting", 10.0, f"fitting on {len(train_rows)} rows")
        model, metrics = await self._run(lambda: _fit(spec, table, train_rows))
        await progress.report(percent=70.0, metrics=metrics)
        if len(val_rows):
            await progress.stage("validating", 70.0, f"measuring on {len(val_rows)} held-out rows")
            metrics |= await self._run(lambda: _validate(model, table, val_rows))
            await progress.report(percent=85.0, metrics=metrics)
        await progress.stage("registering", 90.0, "storing the version")
        version = await self.registry.register_object(
            spec.name,
            model,
            framework=FRAMEWORK,
            metrics=metrics,
            parameters=_parameters(spec, table),
            description=spec.description,
        )
        if spec.promote_to:
            await self.registry.promote(spec.name, version.version, spec.promote_to)
        return Trained(version, model.threshold)

    async def score(self, name: str, rows: np.ndarray, selector: Selector) -> Scored:
        """Scores rows with the version the selector resolves to; concurrent calls for one
        version are scored together."""
        async with self._serving(name, selector) as served:
            model = served.model
            _check_width(model.detector, rows, "points")
            scores, flags = await self.models.predict(served, rows)
            return Scored(scores, flags, model.detector.threshold, served.resolved)

    async def explain(self, name: str, row: np.ndarray, selector: Selector) -> Explained:
        """Scores one point and attributes its score to its features."""
        async with self._serving(name, selector) as served:
            model = served.model
            _check_width(model.detector, row.reshape(1, -1), "point")
            scores, flags = await self.models.predict(served, row.reshape(1, -1))
            contributions = await self._run(lambda: model.explain(row))
            threshold = model.detector.threshold
        return Explained(
            float(scores[0]), bool(flags[0]), threshold, contributions, served.resolved
        )

    def _serving(
        self, name: str, selector: Selector
    ) -> AbstractAsyncContextManager[Served[ServedDetector]]:
        return self.models.serving(
            name, alias=selector.alias, version=selector.version, routing_key=selector.routing_key
        )

    def validate_rows(
        self, rows: list[list[float]], field: str, max_rows: int | None = None
    ) -> np.ndarray:
        """Rows as a finite float matrix within the service's limits (default: a scoring batch)."""
        return validate_matrix(
            rows,
            field=field,
            max_rows=max_rows or self.settings.max_batch_points,
            max_features=self.settings.max_features,
        )

    def validate_point(self, values: list[float], field: str) -> np.ndarray:
        """One point's values as a finite float vector within the service's limits."""
        return validate_point(values, field=field, max_features=self.settings.max_features)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


def _check_training_rows(table: Table, max_rows: int) -> None:
    if table.X.shape[0] > max_rows:
        raise InvalidArgument.for_field("points", f"{table.X.shape[0]} rows, at most {max_rows}")


def _check_width(model: AnomalyModel, rows: np.ndarray, field_name: str) -> None:
    if rows.shape[1] != model.n_features:
        raise InvalidArgument.for_field(
            field_name,
            f"points have {rows.shape[1]} values; the detector was trained on {model.n_features}",
        )


def _fit(
    spec: TrainSpec, table: Table, train_rows: np.ndarray
) -> tuple[AnomalyModel, dict[str, float]]:
    """Fits on the training split (CPU; runs in a thread)."""
    started = time.perf_counter()
    model = AnomalyModel.train(
        spec.algorithm,
        table.X[train_rows],
        params=dict(spec.parameters),
        contamination=spec.contamination,
        feature_names=list(table.feature_names),
        seed=spec.seed,
    )
    metrics = {"fit_seconds": time.perf_counter() - started, "train_rows": float(len(train_rows))}
    return model, metrics | model.detector.training_metrics()


def _validate(model: AnomalyModel, table: Table, val_rows: np.ndarray) -> dict[str, float]:
    """Measures on the held-out split (CPU; runs in a thread)."""
    labels = None if table.y is None else table.y[val_rows]
    metrics = model.validation_metrics(table.X[val_rows], labels)
    return {**metrics, "validation_rows": float(len(val_rows))}


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation indices; all rows train when validation would be too small."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(n * fraction)
    if n_val < MIN_VALIDATION_ROWS or n - n_val < MIN_VALIDATION_ROWS:
        return order, order[:0]
    return order[n_val:], order[:n_val]


def _parameters(spec: TrainSpec, table: Table) -> dict[str, str]:
    return {
        **spec.parameters,
        "algorithm": spec.algorithm.value,
        "contamination": str(spec.contamination),
        "features": str(table.X.shape[1]),
        "feature_names": ",".join(table.feature_names),
        "dataset_id": spec.dataset_id,
        "seed": str(spec.seed),
    }
