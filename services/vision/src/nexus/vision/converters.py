"""Between the protos and the domain: requests -> options and selectors, results -> messages."""

from __future__ import annotations

from google.api import httpbody_pb2

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.common.registry import Resolved
from nexus.vision.engine import Annotated, Prediction, Selector
from nexus.vision.images import ImageFormat
from nexus.vision.results import (
    Detection,
    ImageResult,
    Mask,
    MaskFormat,
    PredictOptions,
    Task,
)

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


def image_format_from_proto(fmt: int) -> ImageFormat:
    """The answer's format (JPEG unless PNG)."""
    return ImageFormat.PNG if fmt == pb.IMAGE_FORMAT_PNG else ImageFormat.JPEG


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
    b = d.box
    return pb.Detection(
        class_id=d.class_id,
        class_name=d.class_name,
        score=d.score,
        box=pb.Box(x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2),
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
