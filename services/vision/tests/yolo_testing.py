"""YOLO models for tests, made here and offline: tiny detectors and segmenters trained on the
generated shapes, untrained pose and classification models from ultralytics' yamls; their
`.pt` checkpoints and ONNX exports (dynamic batch, as the service registers them)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from vision_testing import ASSETS, VISION_DATA, shapes_dataset, shapes_image

import nexus.vision  # noqa: F401  (ultralytics offline before it is imported)


@dataclass(frozen=True)
class Trained:
    """A model made for tests: its checkpoint and its ONNX export."""

    pt: Path
    onnx: Path


def train(root: Path, architecture: str, *, epochs: int = 2, segment: bool = False) -> Trained:
    """Trains `architecture` (a yaml) on generated shapes at 128 px on the CPU and exports it."""
    from ultralytics import YOLO

    data = shapes_dataset(root / "data", train=40, val=8, segment=segment)
    YOLO(architecture).train(
        data=str(data),
        epochs=epochs,
        imgsz=128,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        val=False,
        project=str(root / "runs"),
        name="run",
        exist_ok=True,
        verbose=False,
    )
    pt = root / "runs" / "run" / "weights" / "last.pt"
    return Trained(pt, export(pt, 128))


def untrained(root: Path, architecture: str, imgsz: int, *, confident: bool = False) -> Trained:
    """An untrained model from its yaml, saved and exported. `confident`: the class logits'
    weights and biases are spread (seeded) so that an untrained head finds objects
    at all, with scores that differ (NMS between tied scores keeps an arbitrary one)."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(architecture)
    if confident:
        for branch in model.model.model[-1].cv3:  # type: ignore[union-attr]
            convs = [m for m in branch.modules() if isinstance(m, torch.nn.Conv2d)]
            for conv in convs:  # scores that vary with the image: no ties
                torch.nn.init.normal_(conv.weight, 0.0, 0.1)
            last = convs[-1]
            torch.nn.init.uniform_(last.bias, -1.0, 1.0)
    pt = root / f"{Path(architecture).stem}.pt"
    model.save(pt)
    return Trained(pt, export(pt, imgsz))


def export(pt: Path, imgsz: int) -> Path:
    from ultralytics import YOLO

    return Path(YOLO(str(pt)).export(format="onnx", dynamic=True, simplify=False, imgsz=imgsz))


def shapes_photos(count: int = 4, seed: int = 7, size: int = 160) -> list[np.ndarray]:
    """Generated shapes images (BGR), not in the training set."""
    rng = np.random.default_rng(seed)
    return [shapes_image(rng, size, count=2)[0] for _ in range(count)]


def photos() -> list[np.ndarray]:
    """ultralytics' photos, and the shared ones when that folder is there (BGR)."""
    paths = sorted(ASSETS.glob("*.jpg"))
    if VISION_DATA.is_dir():
        shared = [
            p
            for p in sorted(VISION_DATA.rglob("*"))
            if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
        ]
        paths += shared[:8]
    return [image for p in paths if (image := cv2.imread(str(p))) is not None]


class _Boom:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("echo pwned",))


def malicious_checkpoint() -> bytes:
    """A checkpoint whose pickle calls os.system when loaded freely."""
    import torch

    buffer = io.BytesIO()
    torch.save({"model": _Boom()}, buffer)
    return buffer.getvalue()
