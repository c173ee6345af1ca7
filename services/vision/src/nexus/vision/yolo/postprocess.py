"""A YOLO model's raw output into results, as ultralytics postprocesses it: confidence filter on
the best class, per-class NMS (greedy, like torchvision's), boxes back to image pixels, masks
from prototypes (upsampled to the input, thresholded at logit 0, cropped to the box), keypoints
with their visibility, top-k class probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nexus.vision.results import (
    Box,
    Classification,
    Detection,
    Keypoint,
    Mask,
    MaskFormat,
    PredictOptions,
    Rle,
)
from nexus.vision.yolo.preprocess import Letterbox

MAX_NMS = 30_000
"""Most boxes NMS considers (ultralytics' max_nms)."""
MAX_WH = 7680
"""Offset that keeps boxes of different classes apart in one NMS (ultralytics' max_wh)."""


@dataclass(frozen=True)
class Filters:
    """What one image's request keeps: options with the class filter as ids (None: all)."""

    options: PredictOptions
    class_ids: frozenset[int] | None = None


def candidates(output: np.ndarray, classes: int, filters: Filters) -> np.ndarray:
    """One image's raw rows (C, anchors) -> kept rows (n, 6 + extra): x1 y1 x2 y2 score class
    extra..., in the model's input pixels, by score."""
    rows = output.T
    scores = rows[:, 4 : 4 + classes]
    best = scores.argmax(1)
    conf = scores[np.arange(len(rows)), best]
    keep = conf > filters.options.confidence
    if filters.class_ids is not None:
        keep &= np.isin(best, list(filters.class_ids))
    rows, conf, best = rows[keep], conf[keep], best[keep]
    order = np.argsort(-conf, kind="stable")[:MAX_NMS]
    rows, conf, best = rows[order], conf[order], best[order]
    xyxy = _xywh_to_xyxy(rows[:, :4])
    kept = nms(
        xyxy + best[:, None] * MAX_WH, conf, filters.options.iou, filters.options.max_detections
    )
    extra = rows[kept, 4 + classes :]
    return np.concatenate(
        [xyxy[kept], conf[kept, None], best[kept, None].astype(np.float32), extra], axis=1
    )


def end2end_rows(output: np.ndarray, filters: Filters) -> np.ndarray:
    """One image's rows of an NMS-free model (max_det, 6 + extra), filtered like `candidates`."""
    keep = output[:, 4] > filters.options.confidence
    if filters.class_ids is not None:
        keep &= np.isin(output[:, 5].astype(int), list(filters.class_ids))
    return output[keep][: filters.options.max_detections]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Indices kept by greedy NMS, by descending score (boxes x1 y1 x2 y2), at most `limit`
    (it stops there: the loop runs at most `limit` times however many candidates there are)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    while order.size and len(kept) < limit:
        i = int(order[0])
        kept.append(i)
        rest = order[1:]
        w = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        h = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = w.clip(0) * h.clip(0)
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(kept, dtype=np.int64)


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def detections(
    rows: np.ndarray,
    names: tuple[str, ...],
    placed: Letterbox,
    *,
    kpt_shape: tuple[int, int] | None = None,
) -> list[Detection]:
    """Kept rows -> detections in image pixels (with keypoints for pose models)."""
    boxes = placed.to_image(rows[:, :4].reshape(-1, 2, 2)).reshape(-1, 4)
    found = []
    for row, box in zip(rows, boxes, strict=True):
        class_id = int(row[5])
        points = _keypoints(row[6:], kpt_shape, placed) if kpt_shape else []
        found.append(
            Detection(
                class_id, _name(names, class_id), float(row[4]), Box(*map(float, box)), None, points
            )
        )
    return found


def _name(names: tuple[str, ...], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


def _keypoints(values: np.ndarray, kpt_shape: tuple[int, int], placed: Letterbox) -> list[Keypoint]:
    kpts = values[: kpt_shape[0] * kpt_shape[1]].reshape(kpt_shape)
    xy = placed.to_image(kpts[:, :2])
    scores = kpts[:, 2] if kpt_shape[1] == 3 else np.ones(len(kpts), np.float32)
    return [Keypoint(float(x), float(y), float(s)) for (x, y), s in zip(xy, scores, strict=True)]


def masks(
    rows: np.ndarray,
    protos: np.ndarray,
    input_size: tuple[int, int],
    placed: Letterbox,
    fmt: MaskFormat,
) -> list[Mask | None]:
    """The mask of each kept row of a segmentation model, in image pixels (None: empty; it is
    dropped, as ultralytics drops it)."""
    c, mh, mw = protos.shape
    logits = rows[:, 6 : 6 + c] @ protos.reshape(c, -1)
    out: list[Mask | None] = []
    for row, logit in zip(rows, logits, strict=True):
        binary = _binary_mask(logit.reshape(mh, mw), row[:4], input_size, placed)
        out.append(_encoded(binary, fmt) if binary.any() else None)
    return out


def _binary_mask(
    logit: np.ndarray, box: np.ndarray, input_size: tuple[int, int], placed: Letterbox
) -> np.ndarray:
    """A mask's logits at prototype size -> a uint8 mask of the image (process_mask with
    upsample=True, then the padding taken off and resized to the image)."""
    h, w = input_size
    up = cv2.resize(logit, (w, h), interpolation=cv2.INTER_LINEAR) > 0
    x1, y1, x2, y2 = box
    cols, rws = np.arange(w), np.arange(h)
    up &= ((cols >= x1) & (cols < x2))[None, :] & ((rws >= y1) & (rws < y2))[:, None]
    new_h, new_w = round(placed.height * placed.gain_y), round(placed.width * placed.gain_x)
    inner = up[placed.pad_y : placed.pad_y + new_h, placed.pad_x : placed.pad_x + new_w]
    size = (placed.width, placed.height)
    return cv2.resize(inner.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)


def _encoded(binary: np.ndarray, fmt: MaskFormat) -> Mask:
    if fmt is MaskFormat.RLE:
        return Mask(rle=rle(binary))
    return Mask(polygons=polygons(binary))


def polygons(binary: np.ndarray) -> list[list[float]]:
    """The outer outlines of a binary mask, x0 y0 x1 y1 ... (parts of under 3 points left out)."""
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def rle(binary: np.ndarray) -> Rle:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of 0s."""
    flat = binary.ravel(order="F").astype(bool)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return Rle(binary.shape[0], binary.shape[1], [int(c) for c in counts])


def decode_rle(encoded: Rle) -> np.ndarray:
    """An RLE back to its binary mask (uint8, height x width)."""
    values = np.zeros(sum(encoded.counts), np.uint8)
    position = 0
    for i, count in enumerate(encoded.counts):
        if i % 2:
            values[position : position + count] = 1
        position += count
    return values.reshape((encoded.width, encoded.height)).T


def top_classes(
    probabilities: np.ndarray, names: tuple[str, ...], filters: Filters
) -> list[Classification]:
    """The top-k classes of one image (restricted to the class filter when there is one)."""
    order = np.argsort(-probabilities, kind="stable")
    if filters.class_ids is not None:
        order = order[np.isin(order, list(filters.class_ids))]
    return [
        Classification(int(i), _name(names, int(i)), float(probabilities[i]))
        for i in order[: filters.options.top_k]
    ]
