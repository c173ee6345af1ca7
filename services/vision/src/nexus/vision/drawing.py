"""Results drawn on their image with OpenCV: masks (translucent), boxes, keypoints, labels."""

from __future__ import annotations

import cv2
import numpy as np

from nexus.vision.results import Detection, ImageResult
from nexus.vision.yolo.postprocess import decode_rle

MASK_ALPHA = 0.4
KEYPOINT_MIN_SCORE = 0.5


def colour(class_id: int) -> tuple[int, int, int]:
    """A distinct BGR colour per class (golden-ratio hues)."""
    hue = int((class_id * 0.618033988749895 % 1.0) * 179)
    hsv = np.array([[[hue, 220, 255]]], np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw(image: np.ndarray, result: ImageResult) -> np.ndarray:
    """A copy of a BGR image with the result drawn on it (classes listed top left)."""
    out = image.copy()
    thickness = max(1, round(min(out.shape[:2]) / 300))
    for detection in result.detections:
        _mask(out, detection)
    for detection in result.detections:
        _box(out, detection, thickness)
        _keypoints(out, detection, thickness)
    for row, c in enumerate(result.classifications):
        _label(out, f"{c.class_name} {c.score:.2f}", (4, 4 + row * 22), colour(c.class_id))
    return out


def _mask(out: np.ndarray, detection: Detection) -> None:
    if detection.mask is None:
        return
    area = np.zeros(out.shape[:2], np.uint8)
    if detection.mask.rle is not None:
        area = decode_rle(detection.mask.rle)
    for polygon in detection.mask.polygons:
        points = np.asarray(polygon, np.float32).reshape(-1, 2).round().astype(np.int32)
        cv2.fillPoly(area, [points], 1)
    tint = np.array(colour(detection.class_id), np.float32)
    chosen = area.astype(bool)
    out[chosen] = (out[chosen] * (1 - MASK_ALPHA) + tint * MASK_ALPHA).astype(np.uint8)


def _box(out: np.ndarray, detection: Detection, thickness: int) -> None:
    b = detection.box
    c = colour(detection.class_id)
    cv2.rectangle(out, (round(b.x1), round(b.y1)), (round(b.x2), round(b.y2)), c, thickness)
    _label(out, f"{detection.class_name} {detection.score:.2f}", (round(b.x1), round(b.y1)), c)


def _keypoints(out: np.ndarray, detection: Detection, thickness: int) -> None:
    c = colour(detection.class_id)
    for k in detection.keypoints:
        if k.score >= KEYPOINT_MIN_SCORE:
            cv2.circle(out, (round(k.x), round(k.y)), thickness + 2, c, -1, cv2.LINE_AA)


def _label(out: np.ndarray, text: str, at: tuple[int, int], c: tuple[int, int, int]) -> None:
    """Text on a filled background, above `at` (below it at the image's top edge)."""
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    x, y = at
    top = y - h - base if y - h - base >= 0 else y
    cv2.rectangle(out, (x, top), (x + w, top + h + base), c, -1)
    cv2.putText(out, text, (x, top + h), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
