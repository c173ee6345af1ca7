"""Training a YOLO model on a stored dataset, from an architecture (no pretrained weights), as
the work of a long-running operation.

The run: the dataset's zip is extracted into a temporary folder (paths checked again), ultralytics
trains there on a thread of the service's executor, reporting each epoch (losses, mAP so far,
ETA) through the operation's `Progress`; best.pt is exported to ONNX (with ultralytics' metadata:
names, task, imgsz, kpt_shape) and registered as the model's next version. The temporary folder
is removed by the thread that used it, whatever happens. A cancel reaches the thread through the
progress it reports: training stops at its next batch. Run again after its replica died (the
same idempotent call), the work finds the version its first run registered instead of training
and registering again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
import threading
import time
from collections.abc import Coroutine, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.common.errors import InvalidArgument, NotFound
from nexus.common.idempotency import ran_before
from nexus.common.operations import OperationCancelled, Progress
from nexus.common.registry import ModelRegistry, ModelVersionInfo
from nexus.vision.datasets import DatasetInfo, DatasetStore, Limits, extract
from nexus.vision.results import Task
from nexus.vision.yolo.checkpoints import export_weights

FRAMEWORK = "onnx"
DEFAULT_ARCHITECTURE = "yolo11n"
DEFAULT_EPOCHS = 50
DEFAULT_IMAGE_SIZE = 640
DEFAULT_BATCH = 16
DEFAULT_PATIENCE = 50
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, STRIDE = 32, 1280, 32
FAMILIES = ("yolo11", "yolov8")
SIZES = ("n", "s", "m", "l", "x")
SUFFIXES = {Task.DETECT: "", Task.SEGMENT: "-seg", Task.POSE: "-pose"}
"""The model yaml of an architecture for a task: ultralytics ships these in its package."""
METRIC_SUFFIXES = {Task.DETECT: "B", Task.SEGMENT: "M", Task.POSE: "P"}
"""Whose mAP a task reports: boxes, masks, keypoints (ultralytics' result keys)."""
TRAINING, EXPORTING = (1.0, 95.0), 96.0
"""Percent of the operation where training runs, and where export starts."""


@dataclass(frozen=True)
class TrainSpec:
    """What to train (defaults applied by `with_defaults`)."""

    name: str
    dataset_id: str
    architecture: str = DEFAULT_ARCHITECTURE
    epochs: int = DEFAULT_EPOCHS
    image_size: int = DEFAULT_IMAGE_SIZE
    batch_size: int = DEFAULT_BATCH
    seed: int = 0
    description: str = ""
    patience: int = DEFAULT_PATIENCE


@dataclass(frozen=True)
class Trained:
    """A training's result: the version registered and its validation figures."""

    name: str
    version: str
    map50: float
    map50_95: float
    epochs: int
    task: Task


@dataclass(frozen=True)
class _Run:
    """What the training thread hands back."""

    onnx: bytes
    figures: dict[str, float]
    epochs: int


def architectures(task: Task) -> list[str]:
    """The architectures a dataset of `task` trains."""
    return [f"{family}{size}" for family in FAMILIES for size in SIZES] if task in SUFFIXES else []


def model_yaml(architecture: str, task: Task) -> str:
    """The ultralytics model yaml of an architecture for a task ("yolo11n-seg.yaml")."""
    return f"{architecture.removesuffix(SUFFIXES[task])}{SUFFIXES[task]}.yaml"


def check(spec: TrainSpec, task: Task, max_epochs: int) -> None:
    """Checks a training against its dataset's task and the service's limits.

    Raises:
        InvalidArgument: An unknown architecture (or a weights file name), too many epochs, an
            image size that is not a multiple of 32 in [32, 1280].
    """
    known = architectures(task)
    if spec.architecture.removesuffix(SUFFIXES.get(task, "")) not in known:
        weights = "." in spec.architecture  # yolo11n.pt: ultralytics would download it
        why = (
            "is a file; weights are not fetched"
            if weights
            else f"is not a {task.value} architecture"
        )
        raise InvalidArgument.for_field(
            "train.architecture",
            f"{spec.architecture!r} {why}; name an architecture: {', '.join(known)}",
        )
    if not 1 <= spec.epochs <= max_epochs:
        raise InvalidArgument.for_field("train.epochs", f"must be 1 to {max_epochs}")
    if not MIN_IMAGE_SIZE <= spec.image_size <= MAX_IMAGE_SIZE or spec.image_size % STRIDE:
        raise InvalidArgument.for_field(
            "train.image_size",
            f"must be a multiple of {STRIDE} in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]",
        )


def device_of(setting: str) -> str:
    """ultralytics' device for the service's setting ("auto": the first GPU if there is one)."""
    if setting != "auto":
        return setting
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Trainer:
    """Runs trainings: datasets from the store, work on the executor, versions to the registry."""

    datasets: DatasetStore
    registry: ModelRegistry
    executor: Executor
    limits: Limits
    max_epochs: int
    device: str
    """The service's device setting ("auto", "cpu", "cuda:1"), resolved when a training runs."""
    folder: str = ""

    async def dataset_for(self, spec: TrainSpec) -> DatasetInfo:
        """The dataset a training names, after checking the training against it.

        Raises:
            NotFound: No such dataset.
            InvalidArgument: As `check`.
        """
        info = await self.datasets.info(spec.dataset_id)
        check(spec, info.task, self.max_epochs)
        return info

    async def train(self, spec: TrainSpec, progress: Progress) -> Trained:
        """Trains, exports and registers the model's next version (see the module)."""
        info = await self.dataset_for(spec)
        if (made := self._registered_before(spec.name)) is not None:
            return _trained(made, info.task)
        await progress.stage("loading", 0.0, "fetching the dataset")
        data = await self.datasets.fetch(spec.dataset_id)
        await progress.stage("training", TRAINING[0], f"epoch 0/{spec.epochs}")
        monitor = Monitor(asyncio.get_running_loop(), progress, spec.epochs, info.task)
        work = self.executor.submit(self._run, spec, info.task, data, monitor)
        try:
            run = await asyncio.wrap_future(work)
        finally:
            monitor.abort()  # a cancelled await (a replica stopping) stops the thread too
        await progress.stage("registering", 99.0, "storing the version")
        version = await self.registry.register(
            spec.name,
            run.onnx,
            framework=FRAMEWORK,
            metrics=run.figures,
            parameters=_parameters(spec, info, run.epochs),
            description=spec.description,
        )
        return _trained(version, info.task)

    def _registered_before(self, name: str) -> ModelVersionInfo | None:
        """The version this idempotent call registered in an earlier run, if any."""
        try:
            model = self.registry.get_model_now(name)
        except NotFound:
            return None
        return next((v for v in model.versions if ran_before((v.call,))), None)

    def _run(self, spec: TrainSpec, task: Task, data: bytes, monitor: Monitor) -> _Run:
        """On a worker thread: extract, train, export, in a folder removed at the end."""
        from ultralytics.models import YOLO

        with tempfile.TemporaryDirectory(
            prefix="nexus-vision-train-", dir=self.folder or None
        ) as tmp:
            data_yaml = extract(data, Path(tmp) / "dataset", self.limits)
            model = YOLO(model_yaml(spec.architecture, task), task=task.value)
            for event, callback in monitor.callbacks().items():
                model.add_callback(event, callback)
            device = device_of(self.device)
            model.train(**_train_arguments(spec, data_yaml, Path(tmp) / "runs", device))
            trainer = model.trainer
            assert trainer is not None, "trained"
            monitor.exporting()
            onnx = export_weights(Path(trainer.best), spec.image_size, task.value)
            figures = _figures(trainer.metrics or {}, task)
            return _Run(onnx, figures, trainer.epoch + 1)


def _train_arguments(spec: TrainSpec, data_yaml: Path, runs: Path, device: str) -> dict[str, Any]:
    return {
        "data": str(data_yaml),
        "epochs": spec.epochs,
        "imgsz": spec.image_size,
        "batch": spec.batch_size,
        "seed": spec.seed,
        "patience": spec.patience,
        "device": device,
        "workers": 0,  # no dataloader processes inside a service
        "plots": False,
        "amp": False,  # its check downloads weights
        "project": str(runs),
        "name": "run",
        "exist_ok": True,
        "verbose": False,
    }


def _figures(results: Mapping[str, Any], task: Task) -> dict[str, float]:
    """The task's validation figures from ultralytics' result keys."""
    suffix = METRIC_SUFFIXES[task]
    keys = {
        "map50": f"metrics/mAP50({suffix})",
        "map50_95": f"metrics/mAP50-95({suffix})",
        "precision": f"metrics/precision({suffix})",
        "recall": f"metrics/recall({suffix})",
    }
    return {name: float(results.get(key, 0.0)) for name, key in keys.items()}


def _parameters(spec: TrainSpec, info: DatasetInfo, epochs: int) -> dict[str, str]:
    return {
        "task": info.task.value,
        "architecture": spec.architecture,
        "epochs": str(epochs),
        "epochs_asked": str(spec.epochs),
        "dataset_id": info.id,
        "imgsz": str(spec.image_size),
        "batch": str(spec.batch_size),
        "seed": str(spec.seed),
    }


def _trained(version: ModelVersionInfo, task: Task) -> Trained:
    return Trained(
        name=version.name,
        version=version.version,
        map50=version.metrics.get("map50", 0.0),
        map50_95=version.metrics.get("map50_95", 0.0),
        epochs=int(version.parameters.get("epochs", "0")),
        task=task,
    )


class Monitor:
    """ultralytics callbacks, on the training thread, that report to the operation's `Progress`
    on the event loop; a cancel (OperationCancelled from a report) stops training at the next
    batch, as does `abort`.

    Args:
        loop: The loop the progress belongs to.
        progress: The operation's progress.
        epochs: Epochs asked for.
        task: The dataset's task (whose mAP to report).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, progress: Progress, epochs: int, task: Task
    ) -> None:
        self._loop = loop
        self._progress = progress
        self._epochs = epochs
        self._task = task
        self._stop = threading.Event()
        self._pending: concurrent.futures.Future[None] | None = None
        self._batches = 0
        self._began = time.monotonic()
        self._finished = False

    def callbacks(self) -> dict[str, Any]:
        """ultralytics events -> callbacks."""
        return {
            "on_train_epoch_start": self._on_epoch_start,
            "on_train_batch_end": self._on_batch,
            "on_fit_epoch_end": self._on_epoch,
        }

    def abort(self) -> None:
        """Stops the training at its next batch."""
        self._stop.set()

    def exporting(self) -> None:
        """Reports the export stage (from the training thread)."""
        self._call(self._progress.stage("exporting", EXPORTING, "exporting to ONNX"))

    def _on_epoch_start(self, trainer: Any) -> None:
        self._batches = 0

    def _on_batch(self, trainer: Any) -> None:
        if self._stop.is_set():
            raise OperationCancelled("cancelled")
        self._batches += 1
        if self._pending is None or self._pending.done():  # never queue reports behind the loop
            done = trainer.epoch + self._batches / max(1, len(trainer.train_loader))
            report = self._progress.report(percent=self._percent(done))
            self._pending = asyncio.run_coroutine_threadsafe(report, self._loop)
            self._pending.add_done_callback(self._on_reported)

    def _on_epoch(self, trainer: Any) -> None:
        if self._finished:  # the final validation of best.pt calls again: not an epoch
            return
        self._finished = bool(trainer.stop)
        epoch = trainer.epoch + 1
        elapsed = time.monotonic() - self._began
        metrics = {
            "epoch": float(epoch),
            "epochs": float(self._epochs),
            **_losses(trainer),
            **_figures(trainer.metrics or {}, self._task),
        }
        report = self._progress.report(
            percent=self._percent(epoch),
            metrics=metrics,
            eta_s=elapsed / epoch * (self._epochs - epoch),
            message=f"epoch {epoch}/{self._epochs}",
        )
        self._call(report)

    def _percent(self, epochs_done: float) -> float:
        start, end = TRAINING
        return start + (end - start) * min(1.0, epochs_done / self._epochs)

    def _on_reported(self, future: concurrent.futures.Future[None]) -> None:
        if not future.cancelled() and isinstance(future.exception(), OperationCancelled):
            self._stop.set()

    def _call(self, report: Coroutine[Any, Any, None]) -> None:
        """Runs a report on the loop and waits for it (raising OperationCancelled)."""
        try:
            asyncio.run_coroutine_threadsafe(report, self._loop).result()
        except OperationCancelled:
            self._stop.set()
            raise


def _losses(trainer: Any) -> dict[str, float]:
    """The epoch's mean training losses: box_loss, cls_loss, dfl_loss (and seg/pose ones)."""
    if trainer.tloss is None:
        return {}
    items = trainer.label_loss_items(trainer.tloss, prefix="train")
    return {key.removeprefix("train/"): float(value) for key, value in items.items()}
