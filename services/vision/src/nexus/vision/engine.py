"""The vision service's domain, gathered for the servicer: YOLO models on the model runtime,
faces, text, enhancement, datasets and training. Plain Python: no gRPC here."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from nexus.common.events import EventBus
from nexus.common.operations import Progress
from nexus.common.registry import ModelRegistry
from nexus.vision import datasets
from nexus.vision.datasets import DatasetInfo, DatasetStore
from nexus.vision.settings import VisionSettings
from nexus.vision.training import Trained, Trainer, TrainSpec


class VisionEngine:
    """What the VisionService RPCs call, over the registry, NATS and the service's executor."""

    def __init__(
        self,
        registry: ModelRegistry,
        bus: EventBus,
        settings: VisionSettings,
        executor: Executor,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._bus = bus
        self._executor = executor
        self.datasets, self.trainer = _training(registry, bus, settings, executor)

    async def start(self) -> None:
        """Starts the parts that follow NATS."""
        await self.datasets.start()

    async def warm(self) -> None:
        """Loads what must be ready before SERVING."""

    async def stop(self) -> None:
        """Stops the parts and lets go of the models."""

    # Datasets and training.

    async def upload_dataset(self, name: str, data: bytes) -> DatasetInfo:
        """Checks a dataset zip whole (on the executor: it decodes every image) and stores it.

        Raises:
            ResourceExhausted, InvalidArgument: As `datasets.check`.
        """
        limits = self.trainer.limits
        datasets.check_size(len(data), limits)  # before a thread is taken
        loop = asyncio.get_running_loop()
        contents = await loop.run_in_executor(self._executor, datasets.check, data, limits)
        return await self.datasets.put(name, data, contents)

    async def get_dataset(self, dataset_id: str) -> DatasetInfo:
        """A stored dataset's description; NotFound for an unknown id."""
        return await self.datasets.info(dataset_id)

    async def check_training(self, spec: TrainSpec) -> None:
        """Checks a training before it is queued: its dataset exists, and it fits it."""
        await self.trainer.dataset_for(spec)

    async def train(self, spec: TrainSpec, progress: Progress) -> Trained:
        """A training operation's work (see `nexus.vision.training`)."""
        return await self.trainer.train(spec, progress)


def dataset_limits(settings: VisionSettings) -> datasets.Limits:
    """What a dataset zip may hold, from the settings."""
    return datasets.Limits(
        max_bytes=settings.max_dataset_bytes,
        max_entries=settings.max_dataset_entries,
        max_uncompressed_bytes=settings.max_dataset_uncompressed_bytes,
        max_ratio=settings.max_dataset_ratio,
        max_pixels=settings.max_pixels,
    )


def _training(
    registry: ModelRegistry, bus: EventBus, settings: VisionSettings, executor: Executor
) -> tuple[DatasetStore, Trainer]:
    """The dataset store and the trainer over it."""
    store = DatasetStore(bus.js)
    limits = dataset_limits(settings)
    trainer = Trainer(
        store,
        registry,
        executor,
        limits,
        settings.max_epochs,
        settings.device,
        settings.training_dir,
    )
    return store, trainer
