"""The ONNX path against ultralytics' own PyTorch predict: same boxes (IoU >= 0.9) and classes,
masks, keypoints and class probabilities; and what an upload must be to be served."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from vision_testing import iou
from yolo_testing import Trained, malicious_checkpoint, photos, shapes_photos, untrained

from nexus.common.errors import InvalidArgument
from nexus.vision.results import MaskFormat, PredictOptions, Task
from nexus.vision.yolo import YoloModel, describe
from nexus.vision.yolo.checkpoints import check_onnx, export_checkpoint
from nexus.vision.yolo.postprocess import Filters, decode_rle, polygons, rle

MATCHED = 0.9


def _both(trained: Trained, images: list[np.ndarray], imgsz: int, conf: float, rect: bool = False):  # type: ignore[no-untyped-def]
    """Our results and ultralytics' (rect: image by image, on canvases of stride multiples)."""
    from ultralytics import YOLO

    ours = YoloModel(trained.onnx.read_bytes(), rect=rect).predict(
        images, [Filters(PredictOptions(confidence=conf, mask_format=MaskFormat.RLE))] * len(images)
    )
    reference = YOLO(str(trained.pt))
    if rect:
        theirs = [
            reference.predict(i, conf=conf, imgsz=imgsz, rect=True, verbose=False)[0]
            for i in images
        ]
    else:
        theirs = reference.predict(images, conf=conf, imgsz=imgsz, verbose=False)
    return ours, theirs


def _matches(ours, theirs, top: int = 20) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(their index, our index) of each of their top detections matched by one of ours."""
    boxes, classes = theirs.boxes.xyxy.numpy(), theirs.boxes.cls.numpy().astype(int)
    scores = theirs.boxes.conf.numpy()
    pairs = []
    for i in range(min(top, len(boxes))):
        near = [
            (abs(d.score - scores[i]), j)  # of boxes alike, the one scored alike
            for j, d in enumerate(ours.detections)
            if d.class_id == classes[i]
            and iou(tuple(boxes[i]), (d.box.x1, d.box.y1, d.box.x2, d.box.y2)) >= MATCHED
        ]
        assert near, f"their detection {i} {boxes[i]} has no match"
        pairs.append((i, min(near)[1]))
    return pairs


@pytest.mark.parametrize("rect", [False, True], ids=["square", "rect"])
def test_detections_match_ultralytics_on_shapes_and_photos(tmp_path: Path, rect: bool) -> None:
    detector = untrained(tmp_path, "yolo11n.yaml", 160, confident=True)
    for images in (shapes_photos(), photos()):
        ours, theirs = _both(detector, images, 160, 0.5, rect)
        matched = 0
        for mine, ref in zip(ours, theirs, strict=True):
            matched += len(_matches(mine, ref))
            assert abs(len(mine.detections) - len(ref.boxes)) <= max(1, len(ref.boxes) // 10)
        assert matched > 0


@pytest.mark.parametrize("rect", [False, True], ids=["square", "rect"])
def test_masks_match_ultralytics(segmenter: Trained, rect: bool) -> None:
    images = [*shapes_photos(), cv2.resize(shapes_photos(1, seed=3)[0], (160, 96))]
    ours, theirs = _both(segmenter, images, 128, 0.001, rect)  # 2 epochs: unsure
    compared = 0
    for mine, ref in zip(ours, theirs, strict=True):
        for i, j in _matches(mine, ref):
            expected = np.zeros((mine.height, mine.width), np.uint8)
            cv2.fillPoly(expected, [ref.masks.xy[i].round().astype(np.int32)], 1)
            got = decode_rle(mine.detections[j].mask.rle)  # type: ignore[union-attr, arg-type]
            assert got.shape == expected.shape
            overlap = (got & expected).sum() / max(1, (got | expected).sum())
            assert overlap >= 0.75
            compared += 1
    assert compared > 0


def test_keypoints_match_ultralytics(tmp_path: Path) -> None:
    pose = untrained(tmp_path, "yolo11n-pose.yaml", 160, confident=True)
    ours, theirs = _both(pose, shapes_photos(2) + photos()[:1], 160, 0.5)
    compared = 0
    for mine, ref in zip(ours, theirs, strict=True):
        _matches(mine, ref, top=5)
        for i in range(min(5, len(ref.boxes))):
            # untrained keypoints sit near their anchors: of the boxes alike, one has them
            assert any(
                _same_keypoints(d.keypoints, ref.keypoints.data[i].numpy()) for d in mine.detections
            )
            compared += 1
    assert compared > 0


def _same_keypoints(keypoints: list, expected: np.ndarray) -> bool:  # type: ignore[type-arg]
    got = np.array([(k.x, k.y, k.score) for k in keypoints])
    seen = expected[:, 2] >= 0.5  # ultralytics zeroes the others' x, y; we keep them
    return (
        got.shape == (17, 3)
        and np.allclose(got[:, 2], expected[:, 2], atol=1e-3)
        and np.allclose(got[seen, :2], expected[seen, :2], atol=1.0)
    )


def test_classes_match_ultralytics(tmp_path: Path) -> None:
    classifier = untrained(tmp_path, "yolo11n-cls.yaml", 96)
    ours, theirs = _both(classifier, photos()[:2], 96, 0.25)
    for mine, ref in zip(ours, theirs, strict=True):
        assert [c.class_id for c in mine.classifications] == list(ref.probs.top5)
        np.testing.assert_allclose(
            [c.score for c in mine.classifications], ref.probs.top5conf.numpy(), rtol=0.02
        )


def test_rle_and_polygons_describe_the_mask() -> None:
    mask = np.zeros((6, 5), np.uint8)
    mask[1:4, 2:5] = 1
    encoded = rle(mask)

    assert (encoded.height, encoded.width, encoded.counts[:3]) == (6, 5, [13, 3, 3])
    assert np.array_equal(decode_rle(encoded), mask)
    assert polygons(mask) == [[2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 1.0]]


def test_the_description_comes_from_the_onnx_metadata(detector: Trained) -> None:
    description = check_onnx(detector.onnx.read_bytes())

    assert (description.task, description.names) == (Task.DETECT, ("circle", "square", "triangle"))
    assert (description.imgsz, description.dynamic) == ((128, 128), True)


def test_a_class_filter_keeps_its_classes_and_refuses_unknown_ones(detector: Trained) -> None:
    model = YoloModel(detector.onnx.read_bytes())
    ids = model.class_ids(frozenset({"circle"}))
    (result,) = model.predict(shapes_photos(1), [Filters(PredictOptions(confidence=0.01), ids)])

    assert {d.class_name for d in result.detections} <= {"circle"}
    with pytest.raises(InvalidArgument, match="no class 'hexagon'"):
        model.class_ids(frozenset({"hexagon"}))


def test_a_checkpoint_exports_to_the_same_model(detector: Trained) -> None:
    onnx = export_checkpoint(detector.pt.read_bytes())
    image = shapes_photos(1)
    options = [Filters(PredictOptions())]

    assert YoloModel(onnx).predict(image, options) == YoloModel(detector.onnx.read_bytes()).predict(
        image, options
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (malicious_checkpoint(), "'posix.system'|'os.system'|'nt.system'"),
        (b"not a checkpoint", "not a PyTorch checkpoint"),
    ],
    ids=["os.system", "junk"],
)
def test_a_checkpoint_outside_the_allow_list_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        export_checkpoint(data)


def test_an_onnx_without_ultralytics_metadata_is_refused(detector: Trained) -> None:
    import onnx

    model = onnx.load_from_string(detector.onnx.read_bytes())
    del model.metadata_props[:]

    with pytest.raises(InvalidArgument, match="no ultralytics metadata"):
        check_onnx(model.SerializeToString())
    with pytest.raises(InvalidArgument, match="not an ONNX model"):
        check_onnx(b"junk")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"task": "obb", "names": "{0: 'a'}"}, "'obb' model"),
        ({"task": "detect", "names": "{0: 'a'}", "imgsz": "[100000, 640]"}, "image size"),
        ({"task": "detect", "names": "__import__('os')"}, "unreadable 'names'"),
        ({"task": "pose", "names": "{0: 'a'}"}, "kpt_shape"),
    ],
    ids=["obb", "huge", "code", "pose-without-keypoints"],
)
def test_metadata_that_cannot_be_served_is_refused(metadata: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        describe(metadata, dynamic_batch=True)
