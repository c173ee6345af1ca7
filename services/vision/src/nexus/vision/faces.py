"""Faces with OpenCV's Haar cascade (`haarcascade_frontalface_alt2`, shipped in opencv-python 4).

Why alt2 alone: on the photos we test with (ultralytics' zidane.jpg and bus.jpg, scikit-image's
astronaut, coco8) the `default` cascade found the same faces plus two false ones in zidane.jpg,
and the profile cascade (both directions, merged by non-maximum suppression) found no face that
alt2 missed, at twice the time (ADR 0040).

The score of a face is `n / (n + 10)`, where `n` is the number of raw detection windows that
OpenCV grouped into it (its "neighbours", `detectMultiScale2`'s numDetections): a face seen at
many nearby positions and scales is more certain. At least MIN_NEIGHBOURS windows are needed, so
a score is in [1/3, 1): 20 windows give 0.67, 40 give 0.8.

A CascadeClassifier is not thread-safe (it holds the image it works on; sharing one, concurrent
calls on different images got wrong answers): each thread has its own, loaded once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from nexus.vision.results import Box, Face, FaceResult

CASCADES = Path(cv2.__file__).parent / "data"
"""Where opencv-python keeps its cascades (cv2.data.haarcascades, which has no type stub)."""
CASCADE = "haarcascade_frontalface_alt2.xml"
MIN_NEIGHBOURS = 5
"""Raw windows a face needs (OpenCV's minNeighbors); fewer were false faces in our photos."""
SCORE_HALF = 10
"""Neighbours at which the score is 0.5."""
SCALE_FACTOR = 1.1
MIN_FACE = 24
"""The cascade's window: smaller faces cannot be found."""
DEFAULT_FRACTION = 20
"""min_size 0: the shorter side / 20."""

_local = threading.local()


def detect_faces(image: np.ndarray, min_size: int = 0) -> FaceResult:
    """The faces in a BGR image, largest first; `min_size` is the smallest face side in pixels
    (0: 1/20 of the shorter side, at least 24)."""
    height, width = image.shape[:2]
    side = max(MIN_FACE, min_size or min(height, width) // DEFAULT_FRACTION)
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    boxes, neighbours = _cascade().detectMultiScale2(
        gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBOURS, minSize=(side, side)
    )
    faces = [_face(box, int(n)) for box, n in zip(boxes, np.ravel(neighbours), strict=True)]
    faces.sort(key=lambda face: face.box.area, reverse=True)
    return FaceResult(width=width, height=height, faces=faces)


def score_of(neighbours: int) -> float:
    """A face's score from the windows grouped into it: n / (n + 10), in [0, 1)."""
    return neighbours / (neighbours + SCORE_HALF)


def _face(box: Sequence[int], neighbours: int) -> Face:
    x, y, w, h = (float(v) for v in box)
    return Face(box=Box(x, y, x + w, y + h), score=score_of(neighbours))


def _cascade() -> cv2.CascadeClassifier:
    """This thread's cascade (CascadeClassifier keeps per-call state: not shareable)."""
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        cascade = cv2.CascadeClassifier(str(CASCADES / CASCADE))
        if cascade.empty():  # pragma: no cover - the file ships with opencv-python 4
            raise RuntimeError(f"OpenCV could not load {CASCADE}")
        _local.cascade = cascade
    return cascade
