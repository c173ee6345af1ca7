"""Enhance over real gRPC: each operation does what it says, chains apply in order, sizes stay
within the pixel limit; and the bad inputs of every image RPC with their codes and fields."""

from __future__ import annotations

import io

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image
from vision_testing import ASSETS, Client, client_of, small_settings

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.common.testing.services import StartService
from nexus.common.testing.status import field_of
from nexus.vision.server import create

Op = pb.EnhanceOperation


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _decoded(reply: pb.EnhanceResponse) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(reply.image.data, np.uint8), cv2.IMREAD_COLOR)


async def _enhance(client: Client, image: np.ndarray, *ops: pb.EnhanceOperation) -> np.ndarray:
    request = pb.EnhanceRequest(image=_png(image), operations=ops, format=pb.IMAGE_FORMAT_PNG)
    reply = await client.vision.Enhance(request, metadata=client.metadata)
    assert reply.image.content_type == "image/png"
    return _decoded(reply)


def _noisy_grey(rng: np.random.Generator) -> np.ndarray:
    return np.clip(128 + rng.normal(0, 20, (96, 128, 3)), 0, 255).astype(np.uint8)


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


async def test_denoise_removes_noise(client: Client) -> None:
    noisy = _noisy_grey(np.random.default_rng(0))

    clean = await _enhance(client, noisy, Op(denoise=pb.Denoise(strength=20)))

    assert clean.shape == noisy.shape
    assert clean.std() < noisy.std() / 3


async def test_contrast_spreads_a_dull_image(client: Client) -> None:
    photo = cv2.imread(str(ASSETS / "bus.jpg"))[:256, :256].astype(np.float32)
    dull = (110 + photo * 30 / 255).astype(np.uint8)  # its 256 levels squeezed into 30

    contrasted = await _enhance(client, dull, Op(contrast=pb.Contrast()))

    assert np.ptp(contrasted) > 2 * np.ptp(dull)


async def test_sharpen_adds_detail(client: Client) -> None:
    soft = cv2.GaussianBlur(cv2.imread(str(ASSETS / "bus.jpg"))[:200, :200], (0, 0), 2)

    sharp = await _enhance(client, soft, Op(sharpen=pb.Sharpen(amount=2, radius=2)))

    assert _sharpness(sharp) > 2 * _sharpness(soft)


@pytest.mark.parametrize(
    ("width", "height", "size"), [(64, 0, (64, 48)), (0, 24, (32, 24)), (50, 10, (50, 10))]
)
async def test_resize_keeps_the_aspect_unless_both_sides_are_given(
    client: Client, width: int, height: int, size: tuple[int, int]
) -> None:
    image = np.zeros((96, 128, 3), np.uint8)

    resized = await _enhance(client, image, Op(resize=pb.Resize(width=width, height=height)))

    assert (resized.shape[1], resized.shape[0]) == size


async def test_a_chain_applies_in_order_and_answers_jpeg_by_default(client: Client) -> None:
    image = _noisy_grey(np.random.default_rng(1))
    ops = [Op(resize=pb.Resize(width=256)), Op(denoise=pb.Denoise()), Op(sharpen=pb.Sharpen())]

    reply = await client.vision.Enhance(
        pb.EnhanceRequest(image=_png(image), operations=ops), metadata=client.metadata
    )

    assert reply.image.content_type == "image/jpeg"
    assert reply.image.data[:3] == b"\xff\xd8\xff"
    assert _decoded(reply).shape == (192, 256, 3)  # the denoise ran on the resized image


async def test_a_resize_beyond_the_pixel_limit_is_refused_before_any_work(
    client: Client,
) -> None:
    ops = [Op(denoise=pb.Denoise()), Op(resize=pb.Resize(width=16384, height=16384))]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.vision.Enhance(
            pb.EnhanceRequest(image=_png(np.zeros((8, 8, 3), np.uint8)), operations=ops),
            metadata=client.metadata,
        )

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert field_of(caught.value) == "operations[1].resize"


async def test_denoise_is_limited_to_max_denoise_pixels_at_its_place_in_the_chain(
    start_service: StartService, key: str
) -> None:
    host = await start_service(create, small_settings(max_denoise_pixels=64 * 64))
    image = _png(_noisy_grey(np.random.default_rng(2)))  # 128 x 96
    denoise, shrink = Op(denoise=pb.Denoise()), Op(resize=pb.Resize(width=64))

    async with client_of(host, key) as client:
        shrunk_first = await client.vision.Enhance(
            pb.EnhanceRequest(image=image, operations=[shrink, denoise]), metadata=client.metadata
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.vision.Enhance(
                pb.EnhanceRequest(image=image, operations=[denoise, shrink]),
                metadata=client.metadata,
            )

    assert _decoded(shrunk_first).shape == (48, 64, 3)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert field_of(caught.value) == "operations[0].denoise"


@pytest.mark.parametrize(
    ("op", "field"),
    [(Op(), "operations[0]"), (Op(resize=pb.Resize()), "operations[0].resize")],
    ids=["no-operation", "resize-to-nothing"],
)
async def test_an_empty_operation_is_invalid(client: Client, op: Op, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.vision.Enhance(
            pb.EnhanceRequest(image=_png(np.zeros((8, 8, 3), np.uint8)), operations=[op]),
            metadata=client.metadata,
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == field


def _bomb() -> bytes:
    """A PNG of 8000 x 8000 black pixels: a few kB that would decode to 192 MB."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = _png(np.zeros((32, 32, 3), np.uint8))
TRUNCATED = (ASSETS / "bus.jpg").read_bytes()[:1500]


@pytest.mark.parametrize(
    ("images", "code", "field"),
    [
        ([GOOD, b"not an image"], grpc.StatusCode.INVALID_ARGUMENT, "images[1]"),
        ([TRUNCATED], grpc.StatusCode.INVALID_ARGUMENT, "images[0]"),
        ([GOOD, _bomb()], grpc.StatusCode.RESOURCE_EXHAUSTED, "images[1]"),
        ([GOOD, b"\x89PNG" + bytes(3000)], grpc.StatusCode.RESOURCE_EXHAUSTED, "images[1]"),
        ([GOOD] * 5, grpc.StatusCode.RESOURCE_EXHAUSTED, "images"),
    ],
    ids=["not-an-image", "truncated", "bomb", "oversized", "too-many"],
)
@pytest.mark.parametrize("rpc", ["DetectFaces", "ReadText"])
async def test_bad_images_are_refused_naming_the_image(
    start_service: StartService,
    key: str,
    rpc: str,
    images: list[bytes],
    code: grpc.StatusCode,
    field: str,
) -> None:
    host = await start_service(
        create, small_settings(max_images=4, max_image_bytes=2048, max_pixels=10**6)
    )
    request = getattr(pb, f"{rpc}Request")(images=images)

    async with client_of(host, key) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(client.vision, rpc)(request, metadata=client.metadata)

    assert caught.value.code() == code
    assert field_of(caught.value) == field
    assert field in (caught.value.details() or "")


async def test_enhance_refuses_an_image_over_its_limits(
    start_service: StartService, key: str
) -> None:
    host = await start_service(create, small_settings(max_image_bytes=2048, max_pixels=10**6))
    ops = [Op(contrast=pb.Contrast())]

    async with client_of(host, key) as client:
        for image, code in [
            (b"\x89PNG" + bytes(3000), grpc.StatusCode.RESOURCE_EXHAUSTED),
            (_bomb(), grpc.StatusCode.RESOURCE_EXHAUSTED),
            (TRUNCATED, grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.vision.Enhance(
                    pb.EnhanceRequest(image=image, operations=ops), metadata=client.metadata
                )
            assert (caught.value.code(), field_of(caught.value)) == (code, "image")


async def test_an_unknown_format_is_invalid(client: Client) -> None:
    request = pb.EnhanceRequest(
        image=GOOD,
        operations=[Op(contrast=pb.Contrast())],
        format=7,  # type: ignore[arg-type]
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.vision.Enhance(request, metadata=client.metadata)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == "format"
