"""Image enhancement: denoise, local contrast, sharpen and resize, applied in the order given.

Every operation keeps the image BGR uint8. A resize is checked before any work is done: the
sizes each resize gives are computed first, and one over the pixel limit fails the request
before the first operation runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from nexus.common.errors import InvalidArgument
from nexus.vision.images import too_large


@dataclass(frozen=True)
class Denoise:
    """Non-local means (OpenCV fastNlMeansDenoisingColored) of filter strength `strength`."""

    strength: float = 10.0


@dataclass(frozen=True)
class Contrast:
    """CLAHE on the lightness (L of LAB), with this clip limit, on 8x8 tiles."""

    clip_limit: float = 2.0


@dataclass(frozen=True)
class Sharpen:
    """Unsharp masking: image + amount x (image - Gaussian blur of sigma `radius`)."""

    amount: float = 1.0
    radius: float = 1.0


@dataclass(frozen=True)
class Resize:
    """A new size; 0 for one side keeps the aspect ratio from the other."""

    width: int = 0
    height: int = 0


Operation = Denoise | Contrast | Sharpen | Resize

TILES = (8, 8)
DENOISE_WINDOW = 7
DENOISE_SEARCH = 21


def enhance(
    image: np.ndarray,
    operations: Sequence[Operation],
    *,
    max_pixels: int,
    max_denoise_pixels: int,
) -> np.ndarray:
    """The image with the operations applied in order.

    Raises:
        InvalidArgument: A resize to no size.
        ResourceExhausted: A resize to more than `max_pixels` pixels, or a denoise of more than
            `max_denoise_pixels` (checked before any work).
    """
    height, width = image.shape[:2]
    check_sizes(width, height, operations, max_pixels, max_denoise_pixels)
    for operation in operations:
        image = apply(image, operation)
    return image


def check_sizes(
    width: int,
    height: int,
    operations: Sequence[Operation],
    max_pixels: int,
    max_denoise_pixels: int,
) -> None:
    """Follows the image's size through the operations; fails on a resize over `max_pixels` or
    a denoise of an image over `max_denoise_pixels`."""
    for index, operation in enumerate(operations):
        if isinstance(operation, Resize):
            field = f"operations[{index}].resize"
            width, height = resized(width, height, operation, field)
            if width * height > max_pixels:
                raise too_large(field, f"({width}x{height}) pixels", width * height, max_pixels)
        elif isinstance(operation, Denoise) and width * height > max_denoise_pixels:
            field = f"operations[{index}].denoise"
            pixels = width * height
            raise too_large(field, f"({width}x{height}) pixels", pixels, max_denoise_pixels)


def resized(width: int, height: int, resize: Resize, field: str = "resize") -> tuple[int, int]:
    """The size a resize gives an image of `width` x `height` (at least 1 x 1)."""
    if resize.width <= 0 and resize.height <= 0:
        raise InvalidArgument.for_field(field, "needs a width, a height or both")
    if resize.width and resize.height:
        return resize.width, resize.height
    if resize.width:
        return resize.width, max(1, round(height * resize.width / width))
    return max(1, round(width * resize.height / height)), resize.height


def apply(image: np.ndarray, operation: Operation) -> np.ndarray:
    """One operation."""
    if isinstance(operation, Denoise):
        return denoise(image, operation)
    if isinstance(operation, Contrast):
        return contrast(image, operation)
    if isinstance(operation, Sharpen):
        return sharpen(image, operation)
    return resize(image, operation)


def denoise(image: np.ndarray, op: Denoise) -> np.ndarray:
    """Non-local means, the same strength for lightness and colour."""
    return cv2.fastNlMeansDenoisingColored(
        image, None, op.strength, op.strength, DENOISE_WINDOW, DENOISE_SEARCH
    )


def contrast(image: np.ndarray, op: Contrast) -> np.ndarray:
    """CLAHE on L of LAB: local contrast without shifting the colours."""
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
    clahe = cv2.createCLAHE(clipLimit=op.clip_limit, tileGridSize=TILES)
    lab[:, :, 0] = clahe.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


def sharpen(image: np.ndarray, op: Sharpen) -> np.ndarray:
    """Unsharp mask: (1 + amount) x image - amount x blurred, saturated to uint8."""
    blurred = cv2.GaussianBlur(image, (0, 0), op.radius)
    return cv2.addWeighted(image, 1.0 + op.amount, blurred, -op.amount, 0)


def resize(image: np.ndarray, op: Resize) -> np.ndarray:
    """Area interpolation to shrink (no aliasing), cubic to enlarge."""
    height, width = image.shape[:2]
    new_width, new_height = resized(width, height, op)
    shrinking = new_width * new_height < width * height
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, (new_width, new_height), interpolation=interpolation)
