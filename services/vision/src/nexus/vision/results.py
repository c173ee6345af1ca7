"""What the vision domain answers: plain data, no gRPC (the converters map it to the protos)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Task(enum.Enum):
    """What a YOLO model does (ultralytics' task names)."""

    DETECT = "detect"
    SEGMENT = "segment"
    POSE = "pose"
    CLASSIFY = "classify"


class MaskFormat(enum.Enum):
    """How masks are returned."""

    POLYGON = "polygon"
    RLE = "rle"


@dataclass(frozen=True)
class Box:
    """A box in pixels of the image as sent."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        """Its area (0 for an empty box)."""
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)


@dataclass(frozen=True)
class Rle:
    """A mask in COCO's uncompressed run-length encoding (column-major, starting with 0s)."""

    height: int
    width: int
    counts: list[int]


@dataclass(frozen=True)
class Mask:
    """A mask: outline polygons (x0, y0, x1, y1, ... in pixels) or its RLE."""

    polygons: list[list[float]] = field(default_factory=list)
    rle: Rle | None = None


@dataclass(frozen=True)
class Keypoint:
    """A keypoint in pixels with its visibility score (1 when the model has none)."""

    x: float
    y: float
    score: float = 1.0


@dataclass(frozen=True)
class Detection:
    """One object found in an image."""

    class_id: int
    class_name: str
    score: float
    box: Box
    mask: Mask | None = None
    keypoints: list[Keypoint] = field(default_factory=list)


@dataclass(frozen=True)
class Classification:
    """A class and its probability."""

    class_id: int
    class_name: str
    score: float


@dataclass(frozen=True)
class ImageResult:
    """The result of one image."""

    width: int
    height: int
    detections: list[Detection] = field(default_factory=list)
    classifications: list[Classification] = field(default_factory=list)


@dataclass(frozen=True)
class PredictOptions:
    """Thresholds and formats of one prediction (defaults are ultralytics' own)."""

    confidence: float = 0.25
    iou: float = 0.7
    max_detections: int = 300
    classes: frozenset[str] = frozenset()
    mask_format: MaskFormat = MaskFormat.POLYGON
    top_k: int = 5


@dataclass(frozen=True)
class Face:
    """A face: its box and a score in [0, 1]."""

    box: Box
    score: float


@dataclass(frozen=True)
class FaceResult:
    """The faces of one image, largest first."""

    width: int
    height: int
    faces: list[Face]


@dataclass(frozen=True)
class TextLine:
    """A line of text: its corners (clockwise from the top left), box and confidence."""

    text: str
    confidence: float
    quad: list[float]
    box: Box


@dataclass(frozen=True)
class TextResult:
    """The text of one image: lines in reading order, grouped in rows (boxes side by side)."""

    width: int
    height: int
    rows: list[list[TextLine]]

    @property
    def lines(self) -> list[TextLine]:
        """The lines in reading order: rows top to bottom, each left to right."""
        return [line for row in self.rows for line in row]

    @property
    def text(self) -> str:
        """What it says: the lines of a row joined by spaces, the rows by newlines."""
        return "\n".join(" ".join(line.text for line in row) for row in self.rows)
