"""Images in and out: decoding untrusted bytes within limits, encoding results.

Every image a caller sends goes through `decode`: the format is read from the bytes (never from
a filename or content type), the pixel count is checked from the header before any pixel is
decoded (a decompression bomb costs nothing), a truncated or corrupt file is a clear error, and
the EXIF orientation is applied, so results are in the pixels the caller sees. Images are
numpy arrays in OpenCV's layout: height x width x 3, uint8, BGR.
"""

from __future__ import annotations

import enum
import io
import warnings
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nexus.common.errors import (
    REQUEST_TOO_LARGE,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
)

FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
"""The formats accepted, as Pillow names them."""
JPEG_QUALITY = 90


class ImageFormat(enum.Enum):
    """An encoded image's format, with its media type."""

    JPEG = "image/jpeg"
    PNG = "image/png"


def decode(data: bytes, *, max_pixels: int, field: str = "image") -> np.ndarray:
    """The image in `data` as a BGR uint8 array.

    Raises:
        InvalidArgument: Empty, not a JPEG/PNG/WebP image, truncated or corrupt (`field` named).
        ResourceExhausted: More pixels than `max_pixels` (read from the header, before decoding).
    """
    image = inspect(data, max_pixels=max_pixels, field=field)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt data
        raise InvalidArgument.for_field(field, f"is a damaged {image.format} file") from err
    return np.ascontiguousarray(rgb[:, :, ::-1])


def inspect(data: bytes, *, max_pixels: int, field: str = "image") -> Image.Image:
    """The image in `data`, its header read and checked, no pixel decoded (cheap: check every
    image of a call this way before decoding the first).

    Raises:
        InvalidArgument: Empty, not a JPEG/PNG/WebP image, or no pixels (`field` named).
        ResourceExhausted: More pixels than `max_pixels`.
    """
    if not data:
        raise InvalidArgument.for_field(field, "is empty")
    image = _open(data, field, max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        raise too_large(field, f"({width}x{height}) pixels", width * height, max_pixels)
    if width < 1 or height < 1:
        raise InvalidArgument.for_field(field, f"has no pixels ({width}x{height})")
    return image


def _open(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Reads the header only (no pixels). Pillow itself refuses over 2 x its MAX_IMAGE_PIXELS."""
    try:
        with warnings.catch_warnings():  # our own pixel limit applies, not Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(FORMATS))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, ImportError) as err:
        # ImportError: Pillow 13 retries an unknown file with optional plugins (pi_heif)
        raise InvalidArgument.for_field(field, "is not a JPEG, PNG or WebP image") from err
    except Image.DecompressionBombError as err:
        described = f"has more pixels than the limit of {max_pixels}"
        raise ResourceExhausted(
            f"{field}: {described}",
            reason=REQUEST_TOO_LARGE,
            violations=[FieldViolation(field, described)],
        ) from err
    return image


def encode(image: np.ndarray, fmt: ImageFormat = ImageFormat.JPEG) -> bytes:
    """A BGR uint8 image as JPEG (quality 90) or PNG bytes."""
    if fmt is ImageFormat.PNG:
        ok, buffer = cv2.imencode(".png", image)
    else:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt.name}")
    return buffer.tobytes()


def check_sizes(images: Sequence[bytes], *, max_images: int, max_bytes: int, field: str) -> None:
    """Checks the number of images and each one's encoded size, before any is decoded.

    Raises:
        InvalidArgument: No image.
        ResourceExhausted: More than `max_images` images, or one of more than `max_bytes` bytes
            (the message names it: `images[2]`).
    """
    if not images:
        raise InvalidArgument.for_field(field, "needs at least one image")
    if len(images) > max_images:
        raise too_large(field, "images", len(images), max_images)
    for index, data in enumerate(images):
        if len(data) > max_bytes:
            raise too_large(f"{field}[{index}]", "bytes", len(data), max_bytes)


def too_large(field: str, unit: str, size: int, limit: int) -> ResourceExhausted:
    """A size limit passed by a field, named in the message and as a field violation."""
    error = ResourceExhausted.too_large(f"{field} {unit}", size, limit)
    error.violations.append(FieldViolation(field, f"more than {limit} {unit.strip('()')}"))
    return error
