"""Between the protos and the domain: requests -> options and selectors, results -> messages."""

from __future__ import annotations

from collections.abc import Sequence

from google.api import httpbody_pb2

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.common.errors import InvalidArgument
from nexus.common.registry import Resolved
from nexus.common.registry.converters import timestamp
from nexus.vision import enhance, training
from nexus.vision.datasets import DatasetInfo
from nexus.vision.engine import Annotated, Prediction, Selector
from nexus.vision.images import ImageFormat
from nexus.vision.results import (
    Box,
    Detection,
    FaceResult,
    ImageResult,
    Mask,
    MaskFormat,
    PredictOptions,
    Task,
    TextLine,
    TextResult,
)

# Shared shapes.


def box_to_proto(box: Box) -> pb.Box:
    """A box in pixels."""
    return pb.Box(x1=box.x1, y1=box.y1, x2=box.x2, y2=box.y2)


def image_format(value: int, field: str = "format") -> ImageFormat:
    """The answer's image format (unset: JPEG)."""
    if value == pb.IMAGE_FORMAT_PNG:
        return ImageFormat.PNG
    if value in (pb.IMAGE_FORMAT_UNSPECIFIED, pb.IMAGE_FORMAT_JPEG):
        return ImageFormat.JPEG
    raise InvalidArgument.for_field(field, f"unknown image format {value}")


def image_to_http_body(data: bytes, fmt: ImageFormat) -> httpbody_pb2.HttpBody:
    """Encoded image bytes with their media type (the HTTP body of image answers)."""
    return httpbody_pb2.HttpBody(content_type=fmt.value, data=data)


# YOLO models: Predict, PredictStream, Annotate.

_TASKS = {
    Task.DETECT: pb.TASK_DETECT,
    Task.SEGMENT: pb.TASK_SEGMENT,
    Task.POSE: pb.TASK_POSE,
    Task.CLASSIFY: pb.TASK_CLASSIFY,
}
_DEFAULTS = PredictOptions()


def options_from_proto(options: pb.PredictOptions) -> PredictOptions:
    """Request options, zeros meaning ultralytics' defaults (the rules checked the ranges)."""
    return PredictOptions(
        confidence=options.confidence or _DEFAULTS.confidence,
        iou=options.iou or _DEFAULTS.iou,
        max_detections=options.max_detections or _DEFAULTS.max_detections,
        classes=frozenset(options.classes),
        mask_format=MaskFormat.RLE
        if options.mask_format == pb.MASK_FORMAT_RLE
        else MaskFormat.POLYGON,
        top_k=options.top_k or _DEFAULTS.top_k,
    )


def selector_from_proto(selector: pb.ModelSelector) -> Selector:
    """Which version serves."""
    return Selector(selector.alias, selector.version, selector.routing_key)


def served_to_proto(served: Resolved, task: Task) -> pb.Served:
    """The version that served."""
    return pb.Served(model=served.name, version=served.version, task=_TASKS[task])


def result_to_proto(result: ImageResult, filename: str = "") -> pb.ImageResult:
    """One image's result."""
    return pb.ImageResult(
        width=result.width,
        height=result.height,
        detections=[_detection(d) for d in result.detections],
        classifications=[
            pb.Classification(class_id=c.class_id, class_name=c.class_name, score=c.score)
            for c in result.classifications
        ],
        filename=filename,
    )


def _detection(d: Detection) -> pb.Detection:
    return pb.Detection(
        class_id=d.class_id,
        class_name=d.class_name,
        score=d.score,
        box=box_to_proto(d.box),
        mask=_mask(d.mask) if d.mask is not None else None,
        keypoints=[pb.Keypoint(x=k.x, y=k.y, score=k.score) for k in d.keypoints],
    )


def _mask(mask: Mask) -> pb.Mask:
    rle = mask.rle
    return pb.Mask(
        polygons=[pb.Polygon(points=p) for p in mask.polygons],
        rle=pb.Rle(size=[rle.height, rle.width], counts=rle.counts) if rle is not None else None,
    )


def prediction_to_proto(prediction: Prediction, filenames: list[str]) -> pb.PredictResponse:
    """Predict's answer (filenames echoed where the gateway filled them)."""
    names = filenames + [""] * (len(prediction.results) - len(filenames))
    return pb.PredictResponse(
        results=[result_to_proto(r, n) for r, n in zip(prediction.results, names, strict=False)],
        served=served_to_proto(prediction.served, prediction.task),
    )


def frame_to_proto(frame_id: str, prediction: Prediction) -> pb.PredictStreamResponse:
    """One frame's answer of PredictStream."""
    return pb.PredictStreamResponse(
        frame_id=frame_id,
        result=result_to_proto(prediction.results[0]),
        served=served_to_proto(prediction.served, prediction.task),
    )


def annotated_to_proto(annotated: Annotated, filename: str = "") -> pb.AnnotateResponse:
    """Annotate's answer: the image as an HttpBody, and what was drawn."""
    prediction = annotated.prediction
    return pb.AnnotateResponse(
        image=httpbody_pb2.HttpBody(content_type=annotated.media_type, data=annotated.image),
        result=result_to_proto(prediction.results[0], filename),
        served=served_to_proto(prediction.served, prediction.task),
    )


# Faces, text, enhancement.


def faces_to_proto(results: Sequence[FaceResult]) -> pb.DetectFacesResponse:
    """The faces of each image."""
    return pb.DetectFacesResponse(results=[_face_result(result) for result in results])


def _face_result(result: FaceResult) -> pb.FaceResult:
    faces = [pb.Face(box=box_to_proto(face.box), score=face.score) for face in result.faces]
    return pb.FaceResult(width=result.width, height=result.height, faces=faces)


def text_to_proto(results: Sequence[TextResult]) -> pb.ReadTextResponse:
    """The lines of text of each image."""
    return pb.ReadTextResponse(results=[_text_result(result) for result in results])


def _text_result(result: TextResult) -> pb.TextResult:
    lines = [_text_line(line) for line in result.lines]
    return pb.TextResult(width=result.width, height=result.height, lines=lines, text=result.text)


def _text_line(line: TextLine) -> pb.TextLine:
    return pb.TextLine(
        text=line.text,
        confidence=line.confidence,
        quad=pb.Polygon(points=line.quad),
        box=box_to_proto(line.box),
    )


def enhance_operations(
    operations: Sequence[pb.EnhanceOperation],
) -> list[enhance.Operation]:
    """The enhancement operations in order; a zero parameter takes its default."""
    return [_operation(op, f"operations[{i}]") for i, op in enumerate(operations)]


def _operation(op: pb.EnhanceOperation, field: str) -> enhance.Operation:
    kind = op.WhichOneof("operation")
    if kind == "denoise":
        return enhance.Denoise(strength=op.denoise.strength or enhance.Denoise.strength)
    if kind == "contrast":
        return enhance.Contrast(clip_limit=op.contrast.clip_limit or enhance.Contrast.clip_limit)
    if kind == "sharpen":
        return enhance.Sharpen(
            amount=op.sharpen.amount or enhance.Sharpen.amount,
            radius=op.sharpen.radius or enhance.Sharpen.radius,
        )
    if kind == "resize":
        if not (op.resize.width or op.resize.height):
            raise InvalidArgument.for_field(f"{field}.resize", "needs a width, a height or both")
        return enhance.Resize(width=op.resize.width, height=op.resize.height)
    raise InvalidArgument.for_field(
        field, "names no operation (denoise, contrast, sharpen, resize)"
    )


def enhanced_to_proto(data: bytes, fmt: ImageFormat) -> pb.EnhanceResponse:
    """The enhanced image."""
    return pb.EnhanceResponse(image=image_to_http_body(data, fmt))


# Datasets and training.


def dataset_to_proto(info: DatasetInfo) -> pb.Dataset:
    """A stored dataset's description."""
    return pb.Dataset(
        id=info.id,
        name=info.name,
        class_names=info.class_names,
        train_images=info.train_images,
        val_images=info.val_images,
        objects=info.objects,
        task=_TASKS[info.task],
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
        task=_TASKS[trained.task],
    )
