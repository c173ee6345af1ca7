"""Images into a YOLO model's input, as ultralytics' predictors prepare them.

Detection, segmentation and pose: a letterbox to the model's imgsz (aspect kept, resized with
INTER_LINEAR, padded with grey 114, centred): square (`auto=False`, as ultralytics predicts by
default), so images of any size stack into one batch, or the smallest canvas of stride multiples
(`auto=True`, ultralytics' `rect=True`), so a non-square image costs less. Classification: the
shorter side resized to imgsz, then a centre crop (ultralytics' classify_transforms). RGB, CHW,
float32 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the model's input: per-axis gains and padding in pixels."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int
    width: int
    height: int

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """Points (..., 2) of the model's input mapped to the image's pixels, clipped to it."""
        out = np.empty_like(xy)
        out[..., 0] = ((xy[..., 0] - self.pad_x) / self.gain_x).clip(0, self.width)
        out[..., 1] = ((xy[..., 1] - self.pad_y) / self.gain_y).clip(0, self.height)
        return out


def letterbox(
    image: np.ndarray, size: tuple[int, int], stride: int | None = None
) -> tuple[np.ndarray, Letterbox]:
    """`image` (BGR HWC) in a `size` (h, w) canvas, and how it was placed (ultralytics'
    LetterBox with scaleup=True, center=True; with a `stride`, auto=True: the canvas shrinks to
    the smallest multiple of the stride that holds the resized image)."""
    h0, w0 = image.shape[:2]
    r = min(size[0] / h0, size[1] / w0)
    new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    if (new_w, new_h) != (w0, h0):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = float(size[1] - new_w), float(size[0] - new_h)
    if stride:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    canvas = cv2.copyMakeBorder(
        image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return canvas, Letterbox(new_w / w0, new_h / h0, left, top, w0, h0)


def centre_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The shorter side resized to the crop's, then the centre `size` (h, w) (classification)."""
    h0, w0 = image.shape[:2]
    r = max(size[0] / h0, size[1] / w0)
    new_w, new_h = max(round(w0 * r), size[1]), max(round(h0 * r), size[0])
    interpolation = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - size[0]) // 2, (new_w - size[1]) // 2
    return image[top : top + size[0], left : left + size[1]]


def to_batch(images: list[np.ndarray]) -> np.ndarray:
    """BGR HWC uint8 images of one size as one NCHW float32 RGB batch in [0, 1]."""
    batch = np.stack(images)[..., ::-1].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32) / np.float32(255)
