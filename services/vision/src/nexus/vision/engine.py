"""The vision service's domain, gathered for the servicer: YOLO models on the model runtime,
faces, text, enhancement, datasets and training. Plain Python: no gRPC here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import TypeVar

import numpy as np

from nexus.common.events import EventBus
from nexus.common.registry import ModelRegistry
from nexus.vision import enhance, faces, ocr
from nexus.vision.images import ImageFormat, check_sizes, decode, encode, inspect, too_large
from nexus.vision.results import FaceResult, TextResult
from nexus.vision.settings import VisionSettings

T = TypeVar("T")


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

    async def start(self) -> None:
        """Starts the parts that follow NATS."""

    async def warm(self) -> None:
        """Loads what must be ready before SERVING."""

    async def stop(self) -> None:
        """Stops the parts and lets go of the models."""

    # Faces, text and enhancement: OpenCV and RapidOCR on the executor (never the event loop).

    async def detect_faces(self, images: Sequence[bytes], min_size: int = 0) -> list[FaceResult]:
        """The faces of each image (`min_size`: smallest face side, 0 for 1/20 of the shorter
        side), one result per image in order."""
        self._check_images(images, "images")
        return await self._run(
            lambda: [faces.detect_faces(image, min_size) for image in self._decoded(images)]
        )

    async def read_text(
        self, images: Sequence[bytes], min_confidence: float = 0.0
    ) -> list[TextResult]:
        """The text of each image in reading order, one result per image in order."""
        self._check_images(images, "images")
        threads = self.settings.inference_threads
        return await self._run(
            lambda: [
                ocr.read_text(image, min_confidence, threads=threads)
                for image in self._decoded(images)
            ]
        )

    async def enhance(
        self, image: bytes, operations: Sequence[enhance.Operation], fmt: ImageFormat
    ) -> bytes:
        """The image with the operations applied in order, encoded as `fmt`."""
        if len(image) > self.settings.max_image_bytes:
            raise too_large("image", "bytes", len(image), self.settings.max_image_bytes)
        settings = self.settings

        def work() -> bytes:
            decoded = self._decode(image, "image")
            enhanced = enhance.enhance(
                decoded,
                operations,
                max_pixels=settings.max_pixels,
                max_denoise_pixels=settings.max_denoise_pixels,
            )
            return encode(enhanced, fmt)

        return await self._run(work)

    def _check_images(self, images: Sequence[bytes], field: str) -> None:
        settings = self.settings
        check_sizes(
            images, max_images=settings.max_images, max_bytes=settings.max_image_bytes, field=field
        )

    def _decoded(self, images: Sequence[bytes]) -> Iterator[np.ndarray]:
        """Each image decoded in turn (one decoded image in memory at a time), after every
        header was checked (a bad image fails the call before any work)."""
        fields = [f"images[{index}]" for index in range(len(images))]
        for data, field in zip(images, fields, strict=True):
            inspect(data, max_pixels=self.settings.max_pixels, field=field)
        for data, field in zip(images, fields, strict=True):
            yield self._decode(data, field)

    def _decode(self, data: bytes, field: str) -> np.ndarray:
        return decode(data, max_pixels=self.settings.max_pixels, field=field)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)
