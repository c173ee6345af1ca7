"""One YOLO ONNX model in an ONNX Runtime session: a batch of images in, one result each out."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnxruntime as ort

from nexus.common.errors import FailedPrecondition, InvalidArgument
from nexus.vision.results import Detection, ImageResult, Mask, PredictOptions, Task
from nexus.vision.yolo import postprocess as post
from nexus.vision.yolo.description import Description, describe
from nexus.vision.yolo.postprocess import Filters
from nexus.vision.yolo.preprocess import Letterbox, centre_crop, letterbox, to_batch

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers_for(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime providers for a `device` setting ("auto", "cpu", "cuda", "cuda:N").

    Raises:
        FailedPrecondition: A GPU was asked for and ONNX Runtime has no CUDA provider.
    """
    available = ort.get_available_providers()
    if device == "cpu" or (device == "auto" and CUDA not in available):
        return [CPU]
    if CUDA not in available:
        raise FailedPrecondition(f"device {device!r}: this ONNX Runtime has no CUDA provider")
    index = device.partition(":")[2] or "0"
    _preload_cuda()
    return [(CUDA, {"device_id": index}), CPU]


@functools.cache
def _preload_cuda() -> None:
    """Loads the CUDA and cuDNN libraries of the NVIDIA pip packages (the ones torch uses)
    before the first CUDA session, as onnxruntime-gpu asks for pip-installed CUDA; a session
    whose CUDA provider still cannot start runs on the CPU, which ONNX Runtime logs."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def open_session(onnx: bytes, *, device: str = "cpu", threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session of a model's bytes.

    Raises:
        InvalidArgument: ONNX Runtime cannot load it.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # Idle threads sleep rather than spin: decoding and gRPC share the cores with inference.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(onnx, options, providers=providers_for(device))
    except Exception as err:  # ONNX Runtime's own errors (InvalidProtobuf, Fail...) are many
        raise InvalidArgument.for_field(
            "artifact", "is not an ONNX model ONNX Runtime loads"
        ) from err


def description_of(session: ort.InferenceSession) -> Description:
    """The YOLO description of a session's model (its metadata, its input's batch axis).

    Raises:
        InvalidArgument: Not an ultralytics YOLO export of a task served here.
    """
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InvalidArgument.for_field("artifact", "is not a YOLO model (one NCHW image input)")
    metadata = session.get_modelmeta().custom_metadata_map
    return describe(metadata, dynamic_batch=not isinstance(inputs[0].shape[0], int))


class YoloModel:
    """A YOLO model ready to predict.

    Args:
        onnx: The ONNX file's bytes (an ultralytics export).
        device: "auto", "cpu", "cuda" or "cuda:N".
        threads: Intra-op threads (0: ONNX Runtime's default).
        rect: Letterbox each image to the smallest canvas of stride multiples that holds it at
            imgsz (ultralytics' `rect=True`) rather than to the square imgsz, when the model's
            height and width axes are free: less work for non-square images; images of one
            shape share a session run.
    """

    def __init__(
        self, onnx: bytes, *, device: str = "cpu", threads: int = 0, rect: bool = False
    ) -> None:
        self.session = open_session(onnx, device=device, threads=threads)
        self.description = description_of(self.session)
        shape = self.session.get_inputs()[0].shape
        self.rect = rect and not isinstance(shape[2], int) and not isinstance(shape[3], int)
        self._input = self.session.get_inputs()[0].name

    @property
    def task(self) -> Task:
        """What the model does."""
        return self.description.task

    def warm(self) -> None:
        """One run on a grey image, so the first request does not pay ONNX Runtime's first-run
        allocations."""
        h, w = self.description.imgsz
        self.predict([np.full((h, w, 3), 114, np.uint8)], [Filters(PredictOptions())])

    def class_ids(self, names: frozenset[str]) -> frozenset[int] | None:
        """The ids of a class filter (None for no filter).

        Raises:
            InvalidArgument: A name the model does not have.
        """
        if not names:
            return None
        index = {name: i for i, name in enumerate(self.description.names)}
        unknown = sorted(names - index.keys())
        if unknown:
            raise InvalidArgument.for_field(
                "options.classes", f"the model has no class {unknown[0]!r}"
            )
        return frozenset(index[n] for n in names)

    def predict(
        self, images: Sequence[np.ndarray], filters: Sequence[Filters]
    ) -> list[ImageResult]:
        """One result per BGR image, each with its own filters; one session run per batch (or
        per export batch, for a model whose batch axis is fixed)."""
        step = len(images) if self.description.dynamic else self.description.batch
        results: list[ImageResult] = []
        for start in range(0, len(images), max(step, 1)):
            chunk = slice(start, start + step)
            results += self._predict(list(images[chunk]), list(filters[chunk]))
        return results

    def _predict(self, images: list[np.ndarray], filters: list[Filters]) -> list[ImageResult]:
        size = self.description.imgsz
        if self.task is Task.CLASSIFY:
            (probabilities,) = self._run([centre_crop(i, size) for i in images], len(images))
            return [
                ImageResult(
                    i.shape[1],
                    i.shape[0],
                    classifications=post.top_classes(p, self.description.names, f),
                )
                for i, p, f in zip(images, probabilities, filters, strict=True)
            ]
        stride = self.description.stride if self.rect else None
        placed = [letterbox(i, size, stride) for i in images]
        results: list[ImageResult | None] = [None] * len(images)
        for members in _by_shape([canvas.shape[:2] for canvas, _ in placed]):
            outputs = self._run([placed[m][0] for m in members], len(members))
            shape = placed[members[0]][0].shape[:2]
            for k, m in enumerate(members):
                results[m] = self._objects(outputs, k, placed[m][1], filters[m], shape)
        return [r for r in results if r is not None]

    def _run(self, inputs: list[np.ndarray], n: int) -> list[np.ndarray]:
        batch = to_batch(inputs)
        if not self.description.dynamic and len(batch) < self.description.batch:
            pad = np.zeros((self.description.batch - len(batch), *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, pad])
        return [o[:n] for o in self.session.run(None, {self._input: batch})]

    def _objects(
        self,
        outputs: list[np.ndarray],
        n: int,
        placed: Letterbox,
        f: Filters,
        input_size: tuple[int, int],
    ) -> ImageResult:
        d = self.description
        if d.end2end:
            rows = post.end2end_rows(outputs[0][n], f)
        else:
            rows = post.candidates(outputs[0][n], len(d.names), f)
        found = post.detections(
            rows, d.names, placed, kpt_shape=d.kpt_shape if self.task is Task.POSE else None
        )
        if self.task is Task.SEGMENT and found:
            masks = post.masks(rows, outputs[1][n], input_size, placed, f.options.mask_format)
            found = [
                _with_mask(det, mask)
                for det, mask in zip(found, masks, strict=True)
                if mask is not None
            ]
        return ImageResult(placed.width, placed.height, detections=found)


def _by_shape(shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Indices of the inputs grouped by shape (first-seen order): one session run each."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for n, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(n)
    return list(groups.values())


def _with_mask(detection: Detection, mask: Mask) -> Detection:
    return replace(detection, mask=mask)
