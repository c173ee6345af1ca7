"""The vision service through HTTP: an uploaded photo's faces (multipart/form-data), an image
enhanced from a base64 JSON body and answered as PNG bytes, a bad image as 400."""

from __future__ import annotations

import base64
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.gateway.testing import running_gateway
from nexus.vision.server import create
from nexus.vision.settings import VisionSettings

pytestmark = pytest.mark.integration

ZIDANE = Path(str(importlib.util.find_spec("ultralytics").origin)).parent / "assets/zidane.jpg"


@pytest.fixture
async def http(
    start_service: StartService, nexus_settings: NexusSettings
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with real auth in front of a vision service, and a key of `vision:invoke`."""
    host = await start_service(create, VisionSettings(grpc_port=0, device="cpu"))
    key = await make_key(nexus_settings, "vision:invoke")
    async with (
        running_gateway(nexus_settings, {"vision": f"127.0.0.1:{host.port}"}) as url,
        httpx.AsyncClient(
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}
        ) as client,
    ):
        yield client


async def test_faces_of_an_uploaded_photo(http: httpx.AsyncClient) -> None:
    files = {"images": ("zidane.jpg", ZIDANE.read_bytes(), "image/jpeg")}

    reply = await http.post("/v1/vision/faces:detect", files=files)

    assert reply.status_code == 200, reply.text
    (result,) = reply.json()["results"]
    assert (result["width"], result["height"]) == (1280, 720)
    (face,) = result["faces"]
    assert 900 < face["box"]["x1"] < face["box"]["x2"] < 1100
    assert 0 < face["score"] < 1


async def test_an_image_enhanced_from_json_comes_back_as_png(http: httpx.AsyncClient) -> None:
    image = cv2.imencode(".png", np.full((30, 40, 3), 90, np.uint8))[1].tobytes()
    body = {
        "image": base64.b64encode(image).decode(),
        "operations": [{"contrast": {}}, {"resize": {"width": 80}}],
        "format": "IMAGE_FORMAT_PNG",
    }

    reply = await http.post("/v1/vision/images:enhance", json=body)

    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    decoded = cv2.imdecode(np.frombuffer(reply.content, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (60, 80, 3)


async def test_a_file_that_is_not_an_image_is_a_400_naming_it(http: httpx.AsyncClient) -> None:
    files = [("images", ("a.jpg", ZIDANE.read_bytes())), ("images", ("b.jpg", b"plain text"))]

    reply = await http.post("/v1/vision/faces:detect", files=files)

    assert reply.status_code == 400
    assert "images[1]" in reply.text
