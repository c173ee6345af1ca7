"""Decoding untrusted image bytes: formats from the bytes, limits before decoding, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from vision_testing import ASSETS

from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.vision.images import ImageFormat, decode, encode


def _encoded(fmt: str, size: tuple[int, int] = (40, 30), **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 20)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_jpeg_png_and_webp_decode_to_bgr(fmt: str) -> None:
    image = decode(_encoded(fmt), max_pixels=10_000)

    assert image.shape == (30, 40, 3)
    assert image.dtype == np.uint8
    blue, _, red = image[15, 20].tolist()  # BGR order
    assert red > 150
    assert blue < 80


def test_a_photo_decodes_at_its_size() -> None:
    assert decode((ASSETS / "bus.jpg").read_bytes(), max_pixels=10**7).shape == (1080, 810, 3)


def test_the_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: displayed as 30 wide, 40 high
    data = _encoded("JPEG", exif=exif.tobytes())

    assert decode(data, max_pixels=10_000).shape == (40, 30, 3)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", _encoded("GIF"), _encoded("BMP")],
    ids=["empty", "text", "gif", "bmp"],
)
def test_what_is_not_an_accepted_image_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match="images"):
        decode(data, max_pixels=10_000, field="images")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_truncated_file_is_invalid(fmt: str) -> None:
    whole = _encoded(fmt, (300, 200))

    with pytest.raises(InvalidArgument, match=r"damaged|not a"):
        decode(whole[: len(whole) // 2], max_pixels=10**6)


@pytest.mark.parametrize(("side", "message"), [(7_000, "7000x7000"), (20_000, "more pixels")])
def test_a_decompression_bomb_is_refused_from_its_header(side: int, message: str) -> None:
    bomb = _encoded("PNG", (side, side))  # one colour: a few hundred KB for 49 or 400 Mpx

    with pytest.raises(ResourceExhausted, match=message):
        decode(bomb, max_pixels=40_000_000)


def test_images_encode_as_jpeg_and_png() -> None:
    image = decode(_encoded("PNG"), max_pixels=10_000)

    png = decode(encode(image, ImageFormat.PNG), max_pixels=10_000)
    jpeg = decode(encode(image, ImageFormat.JPEG), max_pixels=10_000)

    assert np.array_equal(png, image)
    assert np.abs(jpeg.astype(int) - image.astype(int)).max() < 20
