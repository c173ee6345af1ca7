"""Text in images with RapidOCR (rapidocr-onnxruntime 1.4): PP-OCRv4 detection and recognition
and the PP-OCR mobile orientation classifier, ONNX models that ship inside the wheel. The
package has no download code: it loads the models from its own folder, so it works offline.

Languages: what the shipped models read, Chinese (simplified and traditional characters) and
English letters, digits and punctuation. Other Latin-script languages read as their unaccented
letters ("Musée" comes back as "Musee"); Japanese kana, Korean, Thai, Devanagari and other
scripts are not read. Spaces between English words are often dropped on tightly set text.

Reading order: rows top to bottom, each left to right, where a box whose vertical centre is
within half the smaller box's height of a row's first box shares that row (ADR 0040). A result's
text joins the boxes of a row with spaces and the rows with newlines.

RapidOCR promises no thread-safety (a call that passes thresholds changes the engine's own):
each thread has its own engine (loaded once per thread, 16 MB of models).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nexus.vision.results import Box, TextLine, TextResult

DEFAULT_MIN_CONFIDENCE = 0.5
LINE_OVERLAP = 0.5
"""Two boxes share a line when their vertical centres differ by less than this fraction of the
smaller box's height."""

_local = threading.local()


def read_text(image: np.ndarray, min_confidence: float = 0.0, *, threads: int = 0) -> TextResult:
    """The lines of text of a BGR image in reading order, those read with less than
    `min_confidence` (0: 0.5) left out. `threads`: ONNX Runtime threads of each of this
    thread's sessions when it makes them (0: ONNX Runtime's default)."""
    height, width = image.shape[:2]
    found, _ = _engine(threads)(image)
    threshold = min_confidence or DEFAULT_MIN_CONFIDENCE
    lines = [_line(quad, text, score) for quad, text, score in found or ()]
    kept = [line for line in lines if line.confidence >= threshold and line.text.strip()]
    return TextResult(width=width, height=height, rows=reading_order(kept))


def reading_order(lines: Sequence[TextLine]) -> list[list[TextLine]]:
    """Rows of lines top to bottom (boxes whose vertical centres are close share a row), each
    row left to right."""
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=_centre_y):
        if rows and _same_row(rows[-1], line):
            rows[-1].append(line)
        else:
            rows.append([line])
    return [sorted(row, key=lambda ln: ln.box.x1) for row in rows]


def _same_row(row: list[TextLine], line: TextLine) -> bool:
    """Whether `line` sits on the row (its centre near the row's first box's centre)."""
    first = row[0]
    height = min(first.box.y2 - first.box.y1, line.box.y2 - line.box.y1)
    return abs(_centre_y(line) - _centre_y(first)) < LINE_OVERLAP * height


def _centre_y(line: TextLine) -> float:
    return (line.box.y1 + line.box.y2) / 2


def _line(quad: Sequence[Sequence[float]], text: str, score: float) -> TextLine:
    """A line from RapidOCR's four corners (clockwise from the top left), text and score."""
    xs = [float(point[0]) for point in quad]
    ys = [float(point[1]) for point in quad]
    corners = [value for point in zip(xs, ys, strict=True) for value in point]
    box = Box(min(xs), min(ys), max(xs), max(ys))
    return TextLine(text=text, confidence=float(score), quad=corners, box=box)


def _engine(threads: int) -> Any:
    """This thread's RapidOCR engine (made on the thread's first call)."""
    engine = getattr(_local, "engine", None)
    if engine is None:
        engine = _local.engine = _new_engine(threads)
    return engine


def _new_engine(threads: int) -> Any:
    """A quiet RapidOCR engine on the models of the wheel; we filter by confidence ourselves."""
    import rapidocr_onnxruntime  # loads onnxruntime: only when text is first read

    logging.getLogger("RapidOCR").setLevel(logging.WARNING)
    models = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return rapidocr_onnxruntime.RapidOCR(
        text_score=0.0,
        print_verbose=False,
        intra_op_num_threads=threads or -1,
        det_model_path=str(models / "ch_PP-OCRv4_det_infer.onnx"),
        cls_model_path=str(models / "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        rec_model_path=str(models / "ch_PP-OCRv4_rec_infer.onnx"),
    )
