"""Between the VisionService protos and the domain's plain values: requests in, results out."""

from __future__ import annotations

from collections.abc import Sequence

from google.api import httpbody_pb2

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.common.errors import InvalidArgument
from nexus.vision import enhance
from nexus.vision.images import ImageFormat
from nexus.vision.results import Box, FaceResult, TextLine, TextResult

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
