"""Uploads made servable: an ONNX export is checked, an ultralytics `.pt` is loaded safely and
exported to ONNX.

A `.pt` is a pickle from outside, so it is never unpickled freely: the globals it names are read
first (`torch.serialization.get_unsafe_globals_in_checkpoint`, no code runs), every one must be a
class of `torch.nn` or `ultralytics.nn` (ALLOWED_PREFIXES), and only then `torch.load` runs with
`weights_only=True` and just those classes allowed. Anything else (`os.system`, `builtins.eval`,
a class of another package) is refused, naming the global. The model loaded this way is saved
again, alone, and exported by ultralytics (`dynamic=True`: the batch axis is free, so requests
batch; `simplify=False`: offline).
"""

from __future__ import annotations

import importlib
import io
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

from nexus.common.errors import InvalidArgument
from nexus.vision.yolo.description import Description
from nexus.vision.yolo.model import description_of, open_session

ALLOWED_PREFIXES = ("torch.nn.modules.", "ultralytics.nn.")
"""Globals a checkpoint may name beyond torch's own weights-only set: layers and model classes."""
DEFAULT_IMGSZ = 640
_EXPORTING = threading.Lock()  # torch.onnx.export keeps global state: one export at a time


def check_onnx(onnx: bytes) -> Description:
    """The description of an uploaded ONNX file.

    Raises:
        InvalidArgument: ONNX Runtime cannot load it, it has no ultralytics metadata, or its
            task is not served here.
    """
    return description_of(open_session(onnx, device="cpu", threads=1))


def allowed_globals(checkpoint: bytes) -> list[Any]:
    """The classes a checkpoint's pickle names, all allowed (imported from their modules).

    Raises:
        InvalidArgument: Not a PyTorch checkpoint, or it names a global outside the allow-list.
    """
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(checkpoint))
    except (RuntimeError, ValueError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise InvalidArgument.for_field("artifact", "is not a PyTorch checkpoint") from err
    for name in sorted(names):
        if not name.startswith(ALLOWED_PREFIXES):
            raise InvalidArgument.for_field(
                "artifact", f"names the global {name!r}, which is not allowed in a checkpoint"
            )
    return [_class(name) for name in sorted(names)]


def _class(name: str) -> type:
    module, _, attribute = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise InvalidArgument.for_field("artifact", f"names the unknown class {name!r}") from err
    if not isinstance(found, type):
        raise InvalidArgument.for_field("artifact", f"names {name!r}, which is not a class")
    return found


def load_checkpoint(checkpoint: bytes) -> tuple[Any, dict[str, Any]]:
    """The model of an ultralytics checkpoint (its EMA when it has one) and its train args,
    unpickled with weights_only=True under the allow-list.

    Raises:
        InvalidArgument: Not an ultralytics checkpoint, or a global outside the allow-list.
    """
    import torch

    classes = allowed_globals(checkpoint)
    try:
        with torch.serialization.safe_globals(classes):
            ckpt = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, AttributeError, TypeError) as err:
        raise InvalidArgument.for_field("artifact", "could not be loaded as weights") from err
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "yaml"):
        raise InvalidArgument.for_field("artifact", "is not an ultralytics YOLO checkpoint")
    args = ckpt.get("train_args") or {}
    return model.float().eval(), dict(args) if isinstance(args, dict) else {}


MAX_IMGSZ = 2048


def _imgsz(value: object) -> int:
    """The training image size of a checkpoint's args (640 when it has none).

    Raises:
        InvalidArgument: Not a size from 32 to MAX_IMGSZ.
    """
    if value is None:
        return DEFAULT_IMGSZ
    if isinstance(value, bool) or not isinstance(value, int) or not 32 <= value <= MAX_IMGSZ:
        raise InvalidArgument.for_field("artifact", f"has a train imgsz of {value!r}")
    return value


def export_weights(weights: Path, imgsz: int, task: str | None = None) -> bytes:
    """Weights this process wrote (a training's best.pt, or a checkpoint loaded safely and
    saved again) exported to ONNX as the service serves them: the batch axis free, not
    simplified (offline). One export at a time; blocking: run it on the executor."""
    from ultralytics import YOLO  # type: ignore[attr-defined]

    with _EXPORTING:
        exported = YOLO(str(weights), task=task).export(
            format="onnx", dynamic=True, simplify=False, imgsz=imgsz, device="cpu"
        )
    return Path(exported).read_bytes()


def export_checkpoint(checkpoint: bytes) -> bytes:
    """An ultralytics `.pt` exported to ONNX (blocking: run it on the executor).

    Raises:
        InvalidArgument: See `load_checkpoint`; or ultralytics cannot export it.
    """
    import torch

    model, args = load_checkpoint(checkpoint)
    imgsz = _imgsz(args.get("imgsz"))
    with tempfile.TemporaryDirectory(prefix="nexus-vision-export-") as folder:
        weights = Path(folder) / "model.pt"
        torch.save({"model": model, "train_args": args}, weights)  # what we loaded, alone
        try:
            return export_weights(weights, imgsz)
        except (RuntimeError, ValueError, TypeError, AttributeError, KeyError) as err:
            raise InvalidArgument.for_field("artifact", "could not be exported to ONNX") from err
