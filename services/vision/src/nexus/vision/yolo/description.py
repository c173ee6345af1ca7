"""What a YOLO ONNX file is, read from the metadata ultralytics writes at export.

ultralytics 8.4 `export(format="onnx")` stores, as ONNX `metadata_props` (all strings):
`task` ("detect", "segment", "pose", "classify", "obb"), `names` (a Python dict literal
`{0: 'person', ...}`), `imgsz` (`[h, w]`), `stride`, `batch` (the export batch, "1" even with
`dynamic=True`), `channels`, `end2end` ("True" for NMS-free heads such as YOLO26, whose output
is already `[batch, max_det, 6 + extra]`), `kpt_shape` (`[17, 3]`, pose only), and `args`
(a dict literal holding `dynamic`, `nms`, ...). The input is `images` `[batch, 3, h, w]` (the
axes named when dynamic); detect/pose output `[batch, 4 + classes (+ keypoints), anchors]`,
segment adds prototypes `[batch, 32, mh, mw]`, classify outputs softmax `[batch, classes]`.
This metadata is the source of truth: nothing is guessed from file names.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nexus.common.errors import InvalidArgument
from nexus.vision.results import Task

MAX_IMGSZ = 4096
"""Largest input side accepted (a bigger one would make every request's canvas huge)."""
SERVED_TASKS = frozenset(Task)
"""The tasks this service serves (ultralytics' "obb" is not one)."""


@dataclass(frozen=True)
class Description:
    """A YOLO model as its ONNX metadata describes it.

    Attributes:
        task: What it does.
        names: Class names by id.
        imgsz: Input (height, width).
        stride: The largest stride of its head.
        kpt_shape: (keypoints, 2 or 3) for pose models, else None.
        dynamic: Whether the batch axis is free (exported with `dynamic=True`).
        batch: The batch size of a model whose batch axis is fixed.
        end2end: Whether the output is already past NMS.
        version: The ultralytics version that exported it.
    """

    task: Task
    names: tuple[str, ...]
    imgsz: tuple[int, int]
    stride: int
    kpt_shape: tuple[int, int] | None
    dynamic: bool
    batch: int
    end2end: bool
    version: str

    def to_parameters(self) -> dict[str, str]:
        """The description as registry parameters (shown by GetModel)."""
        return {
            "task": self.task.value,
            "classes": str(len(self.names)),
            "imgsz": f"{self.imgsz[0]}x{self.imgsz[1]}",
            "dynamic": str(self.dynamic).lower(),
            "ultralytics": self.version,
        }


def describe(metadata: Mapping[str, str], *, dynamic_batch: bool) -> Description:
    """The description in an ONNX file's metadata (`dynamic_batch`: the input's batch axis is
    symbolic).

    Raises:
        InvalidArgument: No ultralytics metadata, or a task this service does not serve.
    """
    if "task" not in metadata or "names" not in metadata:
        raise InvalidArgument.for_field(
            "artifact", "has no ultralytics metadata (task, names): export it with ultralytics"
        )
    task = _task(metadata["task"])
    names = _literal(metadata, "names", dict)
    imgsz = _literal(metadata, "imgsz", (list, int)) if "imgsz" in metadata else 640
    imgsz = [imgsz, imgsz] if isinstance(imgsz, int) else imgsz
    if not all(isinstance(v, int) and 16 <= v <= MAX_IMGSZ for v in imgsz[:2]):
        raise InvalidArgument.for_field("artifact", f"has an image size of {imgsz!r}")
    kpt = _literal(metadata, "kpt_shape", list) if "kpt_shape" in metadata else None
    if task is Task.POSE and (kpt is None or len(kpt) != 2 or kpt[1] not in (2, 3)):
        raise InvalidArgument.for_field("artifact", "is a pose model without a valid kpt_shape")
    return Description(
        task=task,
        names=tuple(str(names[i]) for i in sorted(names)),
        imgsz=(int(imgsz[0]), int(imgsz[-1])),
        stride=int(float(metadata.get("stride", "32"))),
        kpt_shape=(int(kpt[0]), int(kpt[1])) if kpt is not None else None,
        dynamic=dynamic_batch,
        batch=int(metadata.get("batch", "1")),
        end2end=metadata.get("end2end", "False") == "True",
        version=metadata.get("version", ""),
    )


def _task(value: str) -> Task:
    try:
        return Task(value)
    except ValueError:
        served = ", ".join(t.value for t in Task)
        raise InvalidArgument.for_field(
            "artifact", f"is a {value!r} model; this service serves {served}"
        ) from None


def _literal(metadata: Mapping[str, str], key: str, kind: type | tuple[type, ...]) -> Any:
    """A Python literal of the metadata (literal_eval: data only, never code)."""
    try:
        value = ast.literal_eval(metadata[key])
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise InvalidArgument.for_field("artifact", f"has an unreadable {key!r} metadata") from err
    if not isinstance(value, kind) or not value:
        raise InvalidArgument.for_field("artifact", f"has an unreadable {key!r} metadata")
    return value
