"""Protos <-> the vision domain's plain types. Each helper's block maps its own RPCs."""

from __future__ import annotations

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.common.registry.converters import timestamp
from nexus.vision import training
from nexus.vision.datasets import DatasetInfo
from nexus.vision.results import Task

# Datasets and training.

_DATASET_TASKS = {
    Task.DETECT: pb.TASK_DETECT,
    Task.SEGMENT: pb.TASK_SEGMENT,
    Task.POSE: pb.TASK_POSE,
    Task.CLASSIFY: pb.TASK_CLASSIFY,
}


def dataset_to_proto(info: DatasetInfo) -> pb.Dataset:
    """A stored dataset's description."""
    return pb.Dataset(
        id=info.id,
        name=info.name,
        class_names=info.class_names,
        train_images=info.train_images,
        val_images=info.val_images,
        objects=info.objects,
        task=_DATASET_TASKS[info.task],
        sha256=info.sha256,
        size_bytes=info.size_bytes,
        create_time=timestamp(info.created),
    )


def train_spec(request: pb.TrainRequest) -> training.TrainSpec:
    """What to train, defaults applied to the zero values."""
    return training.TrainSpec(
        name=request.name,
        dataset_id=request.dataset_id,
        architecture=request.architecture or training.DEFAULT_ARCHITECTURE,
        epochs=request.epochs or training.DEFAULT_EPOCHS,
        image_size=request.image_size or training.DEFAULT_IMAGE_SIZE,
        batch_size=request.batch_size or training.DEFAULT_BATCH,
        seed=request.seed,
        description=request.description,
        patience=request.patience or training.DEFAULT_PATIENCE,
    )


def trained_to_proto(trained: training.Trained) -> pb.TrainResponse:
    """A training's result."""
    return pb.TrainResponse(
        name=trained.name,
        version=trained.version,
        map50=trained.map50,
        map50_95=trained.map50_95,
        epochs=trained.epochs,
        task=_DATASET_TASKS[trained.task],
    )
