"""Helpers for vision tests: images to work on (photos, and generated shapes with their labels
in the YOLO layout), settings with small limits, a client."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np

from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.api.operations.v1 import operations_pb2_grpc as ops_grpc
from nexus.api.vision.v1 import vision_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.vision.settings import VisionSettings

ASSETS = Path(str(importlib.util.find_spec("ultralytics").origin)).parent / "assets"  # no import
"""Photos that ship with ultralytics: bus.jpg, zidane.jpg."""
SHARED = Path(
    os.environ.get("NEXUS_SHARED_DATA")
    or Path(__file__).resolve().parents[3].parent / "shared/data"
)
VISION_DATA = SHARED / "vision"
"""The benchmark photos beside the repository (tests that need them skip without them)."""


def small_settings(**overrides: object) -> VisionSettings:
    """Settings with small limits, on a free port."""
    values: dict[str, object] = {"grpc_port": 0, "max_images": 4, "device": "cpu"}
    values.update(overrides)
    return VisionSettings(**values)  # type: ignore[arg-type]


class Client:
    """Stubs on one channel, sending an API key with every call."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.vision = pb_grpc.VisionServiceStub(channel)
        self.models = models_grpc.ModelRegistryServiceStub(channel)
        self.operations = ops_grpc.OperationsServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()


@contextlib.asynccontextmanager
async def client_of(host: ServiceHost, key: str) -> AsyncIterator[Client]:
    """A client of a running service."""
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}", options=options) as channel:
        yield Client(channel, key)


SHAPES = ("circle", "square", "triangle")
"""The classes of the generated shapes dataset, by id."""


@dataclass(frozen=True)
class Shape:
    """A shape drawn on a generated image: its class id, box and outline, in pixels."""

    class_id: int
    box: tuple[float, float, float, float]
    outline: np.ndarray


def shapes_image(
    rng: np.random.Generator, size: int = 128, count: int = 2
) -> tuple[np.ndarray, list[Shape]]:
    """A BGR image of `count` filled shapes (circle, square, triangle) of random colours and
    sizes, apart from each other, on a noisy background; and the shapes drawn."""
    image = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 0)
    shapes: list[Shape] = []
    while len(shapes) < count:
        side = int(rng.integers(size // 5, size // 3))
        x, y = (int(v) for v in rng.integers(2, size - side - 2, size=2))
        box = (float(x), float(y), float(x + side), float(y + side))
        if any(_overlap(box, s.box) for s in shapes):
            continue
        class_id = int(rng.integers(0, len(SHAPES)))
        outline = _outline(class_id, x, y, side)
        colour = tuple(int(c) for c in rng.integers(140, 256, size=3))
        cv2.fillPoly(image, [outline.astype(np.int32)], colour, lineType=cv2.LINE_AA)
        shapes.append(Shape(class_id, box, outline))
    return image, shapes


def _outline(class_id: int, x: int, y: int, side: int) -> np.ndarray:
    """The polygon of a shape in its box."""
    if SHAPES[class_id] == "circle":
        angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        r = side / 2
        return np.stack([x + r + r * np.cos(angles), y + r + r * np.sin(angles)], axis=1)
    if SHAPES[class_id] == "square":
        return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]], float)
    return np.array([[x + side / 2, y], [x + side, y + side], [x, y + side]], float)


def _overlap(a: tuple[float, ...], b: tuple[float, ...], margin: float = 4) -> bool:
    return not (
        a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1]
    )


def shapes_dataset(
    root: Path,
    *,
    train: int = 40,
    val: int = 12,
    size: int = 128,
    seed: int = 0,
    segment: bool = False,
) -> Path:
    """Writes a YOLO-layout dataset of generated shapes under `root` (data.yaml, images/ and
    labels/ per split; boxes, or polygons when `segment`) and returns its data.yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, shapes = shapes_image(rng, size, count=int(rng.integers(1, 4)))
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.jpg"), image)
            lines = [_label(s, size, segment) for s in shapes]
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(SHAPES))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def _label(shape: Shape, size: int, segment: bool) -> str:
    """A YOLO label line: "class cx cy w h", or "class x1 y1 x2 y2 ..." (normalised)."""
    if segment:
        points = " ".join(f"{v / size:.6f}" for v in shape.outline.reshape(-1))
        return f"{shape.class_id} {points}"
    x1, y1, x2, y2 = shape.box
    cx, cy, w, h = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size
    return f"{shape.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def zipped(root: Path) -> bytes:
    """The dataset folder as zip bytes (paths relative to `root`, as UploadDataset takes it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two x1 y1 x2 y2 boxes (0 for empty ones)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0
