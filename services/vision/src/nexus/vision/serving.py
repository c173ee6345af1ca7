"""YOLO models on the model runtime: one registry version = one ONNX Runtime session; the
runtime merges concurrent requests' images into one session run (dynamic batching)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from nexus.common.errors import FailedPrecondition
from nexus.common.registry import PreparedUpload, UploadHook
from nexus.common.runtime import Batching, Model, ModelSource
from nexus.vision.results import ImageResult
from nexus.vision.settings import VisionSettings
from nexus.vision.yolo import YoloModel
from nexus.vision.yolo.checkpoints import check_onnx, export_checkpoint
from nexus.vision.yolo.postprocess import Filters

T = TypeVar("T")

FRAMEWORK = "onnx"
"""The registry framework of every servable YOLO version."""
CHECKPOINT_FRAMEWORK = "ultralytics"
"""An uploaded ultralytics `.pt`: exported to ONNX as it is registered."""


@dataclass(frozen=True)
class Frame:
    """One image of a request, with what that request keeps."""

    image: np.ndarray
    filters: Filters


class ServedYolo(Model[Frame, ImageResult]):
    """One registered YOLO version; concurrent frames share session runs."""

    def __init__(self, source: ModelSource, settings: VisionSettings) -> None:
        super().__init__(source)
        self.batching = Batching(
            settings.max_batch_size, settings.max_batch_wait_ms, settings.concurrent_batches
        )
        self._settings = settings
        self._yolo: YoloModel | None = None

    async def load(self) -> None:
        """Fetches the ONNX artifact, opens its session and runs it once (on the executor)."""
        onnx = await self.source.artifact()
        self._yolo = await self.source.run(lambda: self._open(onnx))

    def _open(self, onnx: bytes) -> YoloModel:
        settings = self._settings
        model = YoloModel(
            onnx,
            device=settings.device,
            threads=settings.inference_threads,
            rect=settings.rect_letterbox,
        )
        model.warm()
        return model

    @property
    def yolo(self) -> YoloModel:
        """The loaded model."""
        if self._yolo is None:
            raise FailedPrecondition(f"model {self.source.name} is not loaded")
        return self._yolo

    def predict(self, inputs: Frame) -> ImageResult:
        """One frame alone."""
        return self.predict_batch([inputs])[0]

    def predict_batch(self, batch: list[Frame]) -> list[ImageResult]:
        """Frames of many requests in one session run."""
        return self.yolo.predict([f.image for f in batch], [f.filters for f in batch])

    def unload(self) -> None:
        """Lets go of the session."""
        self._yolo = None


def upload_hooks(executor: Executor) -> dict[str, UploadHook]:
    """The registry's upload hooks: "onnx" is checked, "ultralytics" exported to ONNX; both on
    the executor."""

    def run(work: Callable[[], T]) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(executor, work)

    async def onnx(artifact: bytes) -> PreparedUpload:
        description = await run(lambda: check_onnx(artifact))
        return PreparedUpload(artifact, FRAMEWORK, description.to_parameters())

    async def checkpoint(artifact: bytes) -> PreparedUpload:
        exported = await run(lambda: export_checkpoint(artifact))
        return await onnx(exported)

    return {FRAMEWORK: onnx, CHECKPOINT_FRAMEWORK: checkpoint}
