"""Helpers for dataset and training tests: zips as {path: bytes}, requests, and scoring a
detector the service serves on new generated shapes."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import cv2
import numpy as np
from vision_testing import SHAPES, Client, Shape, iou, shapes_dataset, shapes_image, zipped

from nexus.api.vision.v1 import vision_service_pb2 as pb


def dataset_files(root: Path, **options: object) -> dict[str, bytes]:
    """A generated shapes dataset as {path in the zip: bytes}."""
    shapes_dataset(root, **options)  # type: ignore[arg-type]
    with zipfile.ZipFile(io.BytesIO(zipped(root))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def zip_of(files: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    """Zip bytes of `files` (deflated), with `symlinks` entries marked as symbolic links."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


async def upload(client: Client, archive: bytes, name: str = "shapes") -> pb.Dataset:
    """Uploads a dataset zip; returns what was stored."""
    request = pb.UploadDatasetRequest(name=name, archive=archive)
    reply = await client.vision.UploadDataset(request, metadata=client.metadata)
    return reply.dataset


Found = tuple[list[float], int, float]
"""A detection: box (x1, y1, x2, y2 in pixels), class id, score."""


def new_shapes(images: int, seed: int, size: int = 128) -> list[tuple[np.ndarray, list[Shape]]]:
    """New generated shapes images (one to three shapes each) with the shapes drawn."""
    rng = np.random.default_rng(seed)
    return [shapes_image(rng, size, count=int(rng.integers(1, 4))) for _ in range(images)]


async def predicted(
    client: Client, model: str, version: str, pictures: list[np.ndarray], max_images: int
) -> list[list[Found]]:
    """The service's detections (Predict, the version pinned, confidence 0.01) of each image."""
    options = pb.PredictOptions(confidence=0.01)
    found: list[list[Found]] = []
    for at in range(0, len(pictures), max_images):
        jpegs = [cv2.imencode(".jpg", p)[1].tobytes() for p in pictures[at : at + max_images]]
        request = pb.PredictRequest(
            model=model, images=jpegs, selector=pb.ModelSelector(version=version), options=options
        )
        reply = await client.vision.Predict(request, metadata=client.metadata)
        found += [
            [([d.box.x1, d.box.y1, d.box.x2, d.box.y2], d.class_id, d.score) for d in r.detections]
            for r in reply.results
        ]
    return found


def average_precision_50(found: list[list[Found]], truths: list[list[Shape]]) -> float:
    """mAP at IoU 0.5 (all-point interpolation, mean over the classes) of each image's
    detections against its shapes."""
    hits: dict[int, list[tuple[float, bool]]] = {c: [] for c in range(len(SHAPES))}
    positives = dict.fromkeys(hits, 0)
    for detections, shapes in zip(found, truths, strict=True):
        for shape in shapes:
            positives[shape.class_id] += 1
        taken: set[int] = set()
        for box, cls, score in sorted(detections, key=lambda d: -d[2]):
            match = _best_match(box, cls, shapes, taken)
            if match is not None:
                taken.add(match)
            hits[cls].append((score, match is not None))
    return float(np.mean([_ap(hits[c], positives[c]) for c in hits]))


def _best_match(box: list[float], cls: int, shapes: list, taken: set[int]) -> int | None:
    best, best_iou = None, 0.5
    for i, shape in enumerate(shapes):
        if (
            i not in taken
            and shape.class_id == cls
            and (overlap := iou(box, shape.box)) >= best_iou
        ):
            best, best_iou = i, overlap
    return best


def _ap(detections: list[tuple[float, bool]], positives: int) -> float:
    if positives == 0:
        return 0.0
    hits = np.array([hit for _, hit in sorted(detections, key=lambda d: -d[0])], dtype=float)
    if hits.size == 0:
        return 0.0
    tp = np.cumsum(hits)
    recall = np.concatenate([[0.0], tp / positives])
    precision = np.concatenate([[1.0], tp / np.arange(1, hits.size + 1)])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * envelope[1:]))
