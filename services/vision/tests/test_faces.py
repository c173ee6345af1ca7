"""DetectFaces over real gRPC: faces on photos of people, none on photos without, in order."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from vision_testing import ASSETS, VISION_DATA, Client, iou, shapes_image

from nexus.api.vision.v1 import vision_service_pb2 as pb


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _corners(box: pb.Box) -> tuple[float, float, float, float]:
    return box.x1, box.y1, box.x2, box.y2


async def test_the_frontal_face_in_zidane_jpg_is_found(client: Client) -> None:
    data = (ASSETS / "zidane.jpg").read_bytes()

    reply = await client.vision.DetectFaces(
        pb.DetectFacesRequest(images=[data]), metadata=client.metadata
    )

    (result,) = reply.results
    assert (result.width, result.height) == (1280, 720)
    # Ancelotti faces the camera (looked at by eye: about x 920-1070, y 110-260); Zidane,
    # shouting in half profile, is not a frontal face.
    (face,) = result.faces
    assert iou(_corners(face.box), (920, 110, 1070, 260)) > 0.7
    assert 0.5 < face.score < 1


async def test_the_astronauts_face_is_found(client: Client) -> None:
    path = VISION_DATA / "photos/skimage_astronaut.png"
    if not path.is_file():
        pytest.skip(f"{path} is not here")

    reply = await client.vision.DetectFaces(
        pb.DetectFacesRequest(images=[path.read_bytes()]), metadata=client.metadata
    )

    (face,) = reply.results[0].faces
    assert iou(_corners(face.box), (178, 69, 270, 161)) > 0.7  # by eye: her face
    assert face.score > 0.7


async def test_images_without_faces_have_none_and_results_keep_the_order(client: Client) -> None:
    shapes, _ = shapes_image(np.random.default_rng(3), size=512, count=4)
    bus = cv2.imread(str(ASSETS / "bus.jpg"))
    side_of_the_bus = bus[560:900, 300:810]  # windows, wheels and lettering: no people
    zidane = (ASSETS / "zidane.jpg").read_bytes()
    images = [_png(shapes), zidane, _png(side_of_the_bus)]

    reply = await client.vision.DetectFaces(
        pb.DetectFacesRequest(images=images), metadata=client.metadata
    )

    assert [len(result.faces) for result in reply.results] == [0, 1, 0]
    assert [(r.width, r.height) for r in reply.results] == [(512, 512), (1280, 720), (510, 340)]


async def test_faces_smaller_than_min_size_are_left_out(client: Client) -> None:
    data = (ASSETS / "bus.jpg").read_bytes()

    default = await client.vision.DetectFaces(
        pb.DetectFacesRequest(images=[data]), metadata=client.metadata
    )
    large_only = await client.vision.DetectFaces(
        pb.DetectFacesRequest(images=[data], min_size=100), metadata=client.metadata
    )

    sizes = [face.box.x2 - face.box.x1 for face in default.results[0].faces]
    assert len(sizes) == 2  # the two people in front of the bus, about 55 px each
    assert sizes == sorted(sizes, reverse=True)  # largest first
    assert large_only.results[0].faces == []


async def test_concurrent_calls_on_the_worker_threads_agree(client: Client) -> None:
    # Each executor thread has its own cascade (one holds the image it works on): calls on
    # different images at once must each get the answer they get alone.
    bus = cv2.imread(str(ASSETS / "bus.jpg"))
    zidane = cv2.imread(str(ASSETS / "zidane.jpg"))
    images = [bus[300:700, :500], zidane[:400, 800:], bus[200:800, 50:350], zidane[50:350, 880:]]
    requests = [pb.DetectFacesRequest(images=[_png(image)]) for image in images]
    alone = [await client.vision.DetectFaces(r, metadata=client.metadata) for r in requests]

    together = await asyncio.gather(
        *(client.vision.DetectFaces(r, metadata=client.metadata) for r in requests * 3)
    )

    assert [len(reply.results[0].faces) for reply in alone] == [2, 1, 2, 1]
    assert together == alone * 3
