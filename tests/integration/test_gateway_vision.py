"""YOLO models of the vision service through HTTP: a `.pt` uploaded as a multipart form, images
predicted as form parts and as base64 JSON, an annotated image as the raw response body."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.gateway.testing import running_gateway
from nexus.vision.server import create
from nexus.vision.settings import VisionSettings

pytestmark = pytest.mark.integration


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
