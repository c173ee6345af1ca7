"""The vision service's domain, gathered for the servicer: YOLO models on the model runtime,
faces, text, enhancement, datasets and training. Plain Python: no gRPC here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from nexus.common.events import EventBus
from nexus.common.operations import Progress
from nexus.common.registry import ModelRegistry, Resolved
from nexus.common.runtime import ModelRuntime, Served
from nexus.vision import datasets, drawing, enhance, faces, images, ocr
from nexus.vision.datasets import DatasetInfo, DatasetStore
from nexus.vision.results import FaceResult, ImageResult, PredictOptions, Task, TextResult
from nexus.vision.serving import FRAMEWORK, Frame, ServedYolo
from nexus.vision.settings import VisionSettings
from nexus.vision.training import Trained, Trainer, TrainSpec
from nexus.vision.yolo.postprocess import Filters


@dataclass(frozen=True)
class Selector:
    """Which version of a model serves: an alias (A/B split, sticky by routing key) or a
    pinned version."""

    alias: str = ""
    version: str = ""
    routing_key: str = ""


@dataclass(frozen=True)
class Prediction:
    """Results of a YOLO model, with the version that served them."""

    results: list[ImageResult]
    served: Resolved
    task: Task


@dataclass(frozen=True)
class Annotated:
    """An image with its results drawn on it."""

    image: bytes
    media_type: str
    prediction: Prediction


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
        self.yolo = ModelRuntime(
            registry,
            lambda source: ServedYolo(source, settings),
            executor=executor,
            max_models=settings.model_cache_size,
            max_bytes=settings.model_cache_bytes,
            frameworks=(FRAMEWORK,),
        )
        self.datasets, self.trainer = _training(registry, bus, settings, executor)

    async def start(self) -> None:
        """Starts the parts that follow NATS."""
        await self.datasets.start()
        await self.yolo.start()

    async def warm(self) -> None:
        """Loads what must be ready before SERVING."""
        await self.yolo.warm()

    async def stop(self) -> None:
        """Stops the parts and lets go of the models."""
        await self.yolo.stop()

    # Images in: every count and size checked, then every header, before any pixel is decoded.

    async def decode_all(self, data: Sequence[bytes], field: str = "images") -> list[np.ndarray]:
        """Decodes a request's images within the limits (count, bytes, pixels), on the executor.

        Raises:
            InvalidArgument: No images, or one that is not a good JPEG/PNG/WebP (named).
            ResourceExhausted: Too many images, or one too large in bytes or pixels (named).
        """
        self._check_images(data, field)
        return await self._run(lambda: list(self._decoded(data, field)))

    async def decode(self, data: bytes, field: str = "image") -> np.ndarray:
        """Decodes one image within the limits, on the executor (see `decode_all`)."""
        if len(data) > self.settings.max_image_bytes:
            raise images.too_large(field, "bytes", len(data), self.settings.max_image_bytes)
        return await self._run(lambda: self._decode(data, field))

    def _check_images(self, data: Sequence[bytes], field: str) -> None:
        settings = self.settings
        images.check_sizes(
            data, max_images=settings.max_images, max_bytes=settings.max_image_bytes, field=field
        )

    def _decoded(self, data: Sequence[bytes], field: str) -> Iterator[np.ndarray]:
        """Each image decoded in turn (blocking), after every header was checked (a bad image
        fails the call before any work)."""
        fields = [f"{field}[{index}]" for index in range(len(data))]
        for item, name in zip(data, fields, strict=True):
            images.inspect(item, max_pixels=self.settings.max_pixels, field=name)
        for item, name in zip(data, fields, strict=True):
            yield self._decode(item, name)

    def _decode(self, data: bytes, field: str) -> np.ndarray:
        return images.decode(data, max_pixels=self.settings.max_pixels, field=field)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    # YOLO models (detect, segment, pose, classify).

    async def predict(
        self,
        model: str,
        pictures: Sequence[np.ndarray],
        options: PredictOptions,
        selector: Selector = Selector(),
    ) -> Prediction:
        """Runs a model's served version on decoded images; each image joins the model's
        dynamic batches on its own.

        Raises:
            NotFound: No such model, alias or version.
            InvalidArgument: A class filter the model does not have.
        """
        async with self._serving(model, selector) as served:
            yolo = served.model.yolo
            filters = Filters(options, yolo.class_ids(options.classes))
            results = await asyncio.gather(
                *(self.yolo.predict(served, Frame(p, filters)) for p in pictures)
            )
            return Prediction(list(results), served.resolved, yolo.task)

    async def annotate(
        self,
        model: str,
        data: bytes,
        options: PredictOptions,
        selector: Selector = Selector(),
        fmt: images.ImageFormat = images.ImageFormat.JPEG,
    ) -> Annotated:
        """Predicts on one image and draws the results on it (encoded as `fmt`)."""
        picture = await self.decode(data)
        prediction = await self.predict(model, [picture], options, selector)
        result = prediction.results[0]
        encoded = await self._run(lambda: images.encode(drawing.draw(picture, result), fmt))
        return Annotated(encoded, fmt.value, prediction)

    async def predict_frames(
        self,
        model: str,
        frames: AsyncIterator[tuple[str, bytes]],
        options: PredictOptions,
        selector: Selector = Selector(),
    ) -> AsyncIterator[tuple[str, Prediction]]:
        """Results of a stream of (frame id, image bytes), in order. At most
        max_stream_in_flight frames are in work; the next frame is read only when there is
        room, so a fast sender is held back by the transport's flow control."""
        self.yolo.resolve(  # an unknown model fails the stream before any frame is read
            model, alias=selector.alias, version=selector.version, routing_key=selector.routing_key
        )
        room = asyncio.Semaphore(self.settings.max_stream_in_flight)
        pending: asyncio.Queue[asyncio.Task[tuple[str, Prediction]] | None] = asyncio.Queue()

        async def one(frame_id: str, data: bytes) -> tuple[str, Prediction]:
            picture = await self.decode(data)
            return frame_id, await self.predict(model, [picture], options, selector)

        async def read() -> None:
            try:
                while True:
                    await room.acquire()  # no room: the next frame stays unread
                    try:
                        frame_id, data = await anext(frames)
                    except StopAsyncIteration:
                        return
                    await pending.put(asyncio.create_task(one(frame_id, data)))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await pending.get()) is not None:
                done = await task
                room.release()
                yield done
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                if (left := pending.get_nowait()) is not None:
                    left.cancel()

    def _serving(
        self, model: str, selector: Selector
    ) -> contextlib.AbstractAsyncContextManager[Served[ServedYolo]]:
        return self.yolo.serving(
            model, alias=selector.alias, version=selector.version, routing_key=selector.routing_key
        )

    # Faces, text and enhancement: OpenCV and RapidOCR on the executor (never the event loop).

    async def detect_faces(self, data: Sequence[bytes], min_size: int = 0) -> list[FaceResult]:
        """The faces of each image (`min_size`: smallest face side, 0 for 1/20 of the shorter
        side), one result per image in order; one decoded image in memory at a time."""
        self._check_images(data, "images")
        return await self._run(
            lambda: [faces.detect_faces(image, min_size) for image in self._decoded(data, "images")]
        )

    async def read_text(
        self, data: Sequence[bytes], min_confidence: float = 0.0
    ) -> list[TextResult]:
        """The text of each image in reading order, one result per image in order."""
        self._check_images(data, "images")
        threads = self.settings.inference_threads
        return await self._run(
            lambda: [
                ocr.read_text(image, min_confidence, threads=threads)
                for image in self._decoded(data, "images")
            ]
        )

    async def enhance(
        self, data: bytes, operations: Sequence[enhance.Operation], fmt: images.ImageFormat
    ) -> bytes:
        """The image with the operations applied in order, encoded as `fmt`."""
        if len(data) > self.settings.max_image_bytes:
            raise images.too_large("image", "bytes", len(data), self.settings.max_image_bytes)
        settings = self.settings

        def work() -> bytes:
            enhanced = enhance.enhance(
                self._decode(data, "image"),
                operations,
                max_pixels=settings.max_pixels,
                max_denoise_pixels=settings.max_denoise_pixels,
            )
            return images.encode(enhanced, fmt)

        return await self._run(work)

    # Datasets and training.

    async def upload_dataset(self, name: str, data: bytes) -> DatasetInfo:
        """Checks a dataset zip whole (on the executor: it decodes every image) and stores it.

        Raises:
            ResourceExhausted, InvalidArgument: As `datasets.check`.
        """
        limits = self.trainer.limits
        datasets.check_size(len(data), limits)  # before a thread is taken
        contents = await self._run(lambda: datasets.check(data, limits))
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
