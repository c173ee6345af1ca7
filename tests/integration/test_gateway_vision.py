"""The vision service through HTTP: a `.pt` uploaded as a multipart form, images predicted as
form parts and as base64 JSON, an annotated image as the raw response body; an uploaded photo's
faces, an image enhanced from a base64 JSON body answered as PNG bytes, a bad image as 400."""

from __future__ import annotations

import base64
import importlib.util
import io
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

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
    """A gateway with real auth in front of a vision service, and a key of its scopes."""
    host = await start_service(create, VisionSettings(grpc_port=0, device="cpu"))
    key = await make_key(nexus_settings, "vision:*", "models:*")
    async with (
        running_gateway(nexus_settings, {"vision": f"127.0.0.1:{host.port}"}) as url,
        httpx.AsyncClient(
            base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}
        ) as client,
    ):
        yield client


@pytest.fixture
def checkpoint(tmp_path: Path) -> bytes:
    """An untrained yolo11n checkpoint (speed and shapes do not need weights)."""
    from ultralytics import YOLO  # type: ignore[attr-defined]  # offline: nexus.vision is imported

    path = tmp_path / "yolo11n.pt"
    YOLO("yolo11n.yaml").save(path)
    return path.read_bytes()


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_upload_predict_and_annotate_over_http(
    http: httpx.AsyncClient, checkpoint: bytes
) -> None:
    uploaded = await http.post(
        "/v1/vision/models/street/versions",
        data={"framework": "ultralytics"},
        files={"artifact": ("yolo11n.pt", checkpoint, "application/octet-stream")},
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["version"]["framework"] == "onnx"
    promoted = await http.post("/v1/vision/models/street/versions/1:promote", json={})
    assert promoted.status_code == 200, promoted.text

    form = await http.post(
        "/v1/vision/models/street:predict",
        files=[
            ("images", ("a.png", _png(64, 48), "image/png")),
            ("images", ("b.png", _png(32, 32), "image/png")),
        ],
    )
    as_json = await http.post(
        "/v1/vision/models/street:predict",
        json={"images": [base64.b64encode(_png(40, 30)).decode()], "options": {"confidence": 0.5}},
    )
    annotated = await http.post(
        "/v1/vision/models/street:annotate",
        data={"format": "IMAGE_FORMAT_PNG"},
        files={"image": ("a.png", _png(64, 48), "image/png")},
    )
    missing = await http.post(
        "/v1/vision/models/nope:predict", json={"images": [base64.b64encode(_png(8, 8)).decode()]}
    )
    bad = await http.post(
        "/v1/vision/models/street:predict", json={"images": [base64.b64encode(b"text").decode()]}
    )

    assert form.status_code == 200, form.text
    results = form.json()["results"]
    assert [(r["width"], r["height"], r["filename"]) for r in results] == [
        (64, 48, "a.png"),
        (32, 32, "b.png"),
    ]
    assert form.json()["served"] == {"model": "street", "version": "1", "task": "TASK_DETECT"}
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["results"][0]["width"] == 40
    assert annotated.status_code == 200, annotated.text
    assert annotated.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(annotated.content)).size == (64, 48)
    assert (missing.status_code, bad.status_code) == (404, 400)


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
