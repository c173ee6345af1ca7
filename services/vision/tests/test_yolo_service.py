"""YOLO models through the service, over real gRPC with a real NATS: uploads (.pt and ONNX),
Predict, Annotate, PredictStream, A/B splits, and bad input with its status codes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from vision_testing import ASSETS, Client, small_settings
from yolo_testing import Trained, malicious_checkpoint, shapes_photos, untrained

from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.common.server import ServiceHost
from nexus.vision.engine import VisionEngine
from nexus.vision.images import decode
from nexus.vision.results import PredictOptions

UNSURE = pb.PredictOptions(confidence=0.001, max_detections=5)  # a 2-epoch model is unsure


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


async def _upload(client: Client, name: str, data: bytes, framework: str) -> models_pb.ModelVersion:
    request = models_pb.UploadModelRequest(name=name, artifact=data, framework=framework)
    response = await client.models.UploadModel(request, metadata=client.metadata)
    return response.version


async def _uploaded(client: Client, detector: Trained, name: str = "shapes") -> None:
    """Version 1 from the .pt, version 2 from the ONNX; version 1 in production."""
    await _upload(client, name, detector.pt.read_bytes(), "ultralytics")
    await _upload(client, name, detector.onnx.read_bytes(), "onnx")
    await client.models.PromoteModel(
        models_pb.PromoteModelRequest(name=name, version="1"), metadata=client.metadata
    )


async def test_a_pt_and_an_onnx_upload_serve_the_same_detections(
    client: Client, detector: Trained
) -> None:
    name = f"shapes-{uuid.uuid4().hex[:8]}"  # the session's NATS is shared: a model of its own
    pt = await _upload(client, name, detector.pt.read_bytes(), "ultralytics")
    onnx = await _upload(client, name, detector.onnx.read_bytes(), "onnx")
    images = [_jpeg(i) for i in shapes_photos(3)]

    answers = [
        await client.vision.Predict(
            pb.PredictRequest(
                model=name,
                images=images,
                images_filename=["a.jpg"],
                selector=pb.ModelSelector(version=v),
                options=UNSURE,
            ),
            metadata=client.metadata,
        )
        for v in (pt.version, onnx.version)
    ]

    assert (pt.framework, onnx.framework) == ("onnx", "onnx")
    assert pt.parameters["task"] == "detect"
    assert [a.served.version for a in answers] == [pt.version, onnx.version]
    assert answers[0].served.task == pb.TASK_DETECT
    assert len(answers[0].results) == 3
    assert answers[0].results[0].filename == "a.jpg"
    assert (answers[0].results[0].width, answers[0].results[0].height) == (160, 160)
    assert answers[0].results == answers[1].results  # the .pt was exported to the same model
    names = {d.class_name for r in answers[0].results for d in r.detections}
    assert names
    assert names <= {"circle", "square", "triangle"}


@pytest.mark.parametrize(("fmt", "media"), [(pb.IMAGE_FORMAT_PNG, "image/png"), (0, "image/jpeg")])
async def test_annotate_draws_the_detections(
    client: Client, detector: Trained, fmt: int, media: str
) -> None:
    await _uploaded(client, detector)
    image = shapes_photos(1)[0]

    answer = await client.vision.Annotate(
        pb.AnnotateRequest(model="shapes", image=_jpeg(image), options=UNSURE, format=fmt),
        metadata=client.metadata,
    )

    drawn = decode(answer.image.data, max_pixels=10**6)
    assert answer.image.content_type == media
    assert drawn.shape == image.shape
    assert answer.result.detections
    assert answer.served.version == "1"
    assert np.abs(drawn.astype(int) - decode(_jpeg(image), max_pixels=10**6)).max() > 100


async def test_a_stream_answers_every_frame_in_order(client: Client, detector: Trained) -> None:
    await _uploaded(client, detector)
    frames = [_jpeg(i) for i in shapes_photos(7)]

    async def requests() -> AsyncIterator[pb.PredictStreamRequest]:
        yield pb.PredictStreamRequest(
            model="shapes", image=frames[0], frame_id="f0", options=UNSURE
        )
        for n, frame in enumerate(frames[1:], 1):
            yield pb.PredictStreamRequest(image=frame, frame_id=f"f{n}")

    answers = [a async for a in client.vision.PredictStream(requests(), metadata=client.metadata)]

    assert [a.frame_id for a in answers] == [f"f{n}" for n in range(7)]
    assert {a.served.version for a in answers} == {"1"}
    assert all(a.result.width == 160 for a in answers)


async def test_a_split_alias_reports_the_version_that_served(
    client: Client, detector: Trained
) -> None:
    await _uploaded(client, detector)
    await client.models.SetTrafficSplit(
        models_pb.SetTrafficSplitRequest(
            name="shapes",
            alias="production",
            splits=[
                models_pb.TrafficSplit(version="1", weight=1),
                models_pb.TrafficSplit(version="2", weight=1),
            ],
        ),
        metadata=client.metadata,
    )
    image = _jpeg(shapes_photos(1)[0])

    async def served(key: str) -> str:
        request = pb.PredictRequest(
            model="shapes", images=[image], selector=pb.ModelSelector(routing_key=key)
        )
        return (await client.vision.Predict(request, metadata=client.metadata)).served.version

    versions = {key: await served(key) for key in (f"user-{n}" for n in range(16))}

    assert set(versions.values()) == {"1", "2"}
    again = {key: await served(key) for key in list(versions)[:4]}
    assert again == {key: versions[key] for key in again}  # sticky by routing key


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_bad_input_gets_clear_codes(client: Client, detector: Trained) -> None:
    await _uploaded(client, detector)
    good = _jpeg(shapes_photos(1)[0])
    truncated = (ASSETS / "bus.jpg").read_bytes()[:5000]

    def predict(images: list[bytes], model: str = "shapes", **options: object) -> object:
        request = pb.PredictRequest(
            model=model, images=images, options=pb.PredictOptions(**options)
        )  # type: ignore[arg-type]
        return client.vision.Predict(request, metadata=client.metadata)

    assert await _code(predict([b"not an image"])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(predict([truncated])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(predict([good] * 5)) == grpc.StatusCode.RESOURCE_EXHAUSTED  # max_images 4
    assert (
        await _code(predict([b"x" * (16 * 1024 * 1024 + 1)])) == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert await _code(predict([good], model="nope")) == grpc.StatusCode.NOT_FOUND
    assert await _code(predict([good], classes=["hexagon"])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(predict([])) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("data", "framework", "message"),
    [
        (malicious_checkpoint(), "ultralytics", "system"),
        (b"junk", "ultralytics", "not a PyTorch checkpoint"),
        (b"junk", "onnx", "not an ONNX model"),
    ],
    ids=["os.system-pt", "junk-pt", "junk-onnx"],
)
async def test_bad_uploads_are_refused(
    client: Client, data: bytes, framework: str, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _upload(client, "evil", data, framework)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_a_stream_reads_a_frame_only_when_one_is_done(
    vision: ServiceHost, client: Client, detector: Trained
) -> None:
    await _uploaded(client, detector)
    engine = VisionEngine(
        await vision.registry(), vision.bus, small_settings(max_stream_in_flight=2), vision.executor
    )
    await engine.start()
    frames = [_jpeg(i) for i in shapes_photos(8)]
    pulled = 0

    async def source() -> AsyncIterator[tuple[str, bytes]]:
        nonlocal pulled
        for n, frame in enumerate(frames):
            pulled += 1
            yield f"f{n}", frame

    seen = []
    async for frame_id, _ in engine.predict_frames("shapes", source(), PredictOptions()):
        seen.append(frame_id)
        assert pulled <= len(seen) + 2  # at most 2 in work beyond those answered
    await engine.stop()

    assert seen == [f"f{n}" for n in range(8)]


async def test_masks_keypoints_and_classes_come_back_in_their_fields(
    client: Client, segmenter: Trained, tmp_path: Path
) -> None:
    pose = untrained(tmp_path, "yolo11n-pose.yaml", 160, confident=True)
    classifier = untrained(tmp_path, "yolo11n-cls.yaml", 96)
    for name, model in (("seg", segmenter), ("pose", pose), ("cls", classifier)):
        await _upload(client, name, model.onnx.read_bytes(), "onnx")
    image = [_jpeg(shapes_photos(1)[0])]

    async def predict(name: str, **options: object) -> pb.PredictResponse:
        request = pb.PredictRequest(
            model=name,
            images=image,
            selector=pb.ModelSelector(version="1"),
            options=pb.PredictOptions(**options),  # type: ignore[arg-type]
        )
        return await client.vision.Predict(request, metadata=client.metadata)

    rle = (await predict("seg", confidence=0.001, mask_format=pb.MASK_FORMAT_RLE)).results[0]
    polygons = (await predict("seg", confidence=0.001)).results[0]
    poses = await predict("pose", confidence=0.5, max_detections=3)
    classes = await predict("cls", top_k=3)

    assert rle.detections
    assert all(list(d.mask.rle.size) == [160, 160] for d in rle.detections)
    assert all(sum(d.mask.rle.counts) == 160 * 160 for d in rle.detections)
    assert all(d.mask.polygons for d in polygons.detections)
    assert poses.served.task == pb.TASK_POSE
    assert [len(d.keypoints) for d in poses.results[0].detections] == [17, 17, 17]
    assert all(0 <= k.score <= 1 for d in poses.results[0].detections for k in d.keypoints)
    assert classes.served.task == pb.TASK_CLASSIFY
    top = classes.results[0].classifications
    assert len(top) == 3
    assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (pb.PredictStreamRequest(image=b"x"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.PredictStreamRequest(model="nope", image=b"x"), grpc.StatusCode.NOT_FOUND),
        (pb.PredictStreamRequest(model="shapes", image=b"x"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["no-model", "unknown-model", "not-an-image"],
)
async def test_a_bad_stream_ends_with_a_clear_code(
    client: Client, detector: Trained, first: pb.PredictStreamRequest, code: grpc.StatusCode
) -> None:
    await _uploaded(client, detector)

    async def requests() -> AsyncIterator[pb.PredictStreamRequest]:
        yield first

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in client.vision.PredictStream(requests(), metadata=client.metadata):
            pass

    assert caught.value.code() == code
