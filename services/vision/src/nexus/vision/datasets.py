"""Training datasets: a zip in the YOLO layout, checked whole before it is stored.

A zip from a caller is untrusted: its size, entry count, uncompressed size and compression ratio
are bounded (zip bombs are RESOURCE_EXHAUSTED), its paths may not leave the archive (absolute,
`..`, symlinks), and every image decodes within the pixel limit and every label line is valid
for one task (detect, segment or pose) with class ids in range and normalised coordinates, or
the upload is INVALID_ARGUMENT naming the file and line. Checked zips are kept as they came in
the object store bucket `nexus_vision_datasets`; the object's description holds the `DatasetInfo`
as JSON. Training extracts a stored zip with the same path checks (`extract`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from nats.js.api import ObjectMeta
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from nexus.common.errors import REQUEST_TOO_LARGE, InvalidArgument, NotFound, ResourceExhausted
from nexus.common.idempotency import new_id
from nexus.common.kv import nats_unavailable, open_object_store
from nexus.vision.images import decode
from nexus.vision.results import Task

BUCKET = "nexus_vision_datasets"
FIELD = "archive"
DATA_YAML = "data.yaml"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
OTHER_IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".mpo", ".tif", ".tiff", ".pfm", ".heic"})
"""Images ultralytics would train on too, which the service does not decode: refused."""
TOLERANCE = 1e-3
"""How far outside [0, 1] a normalised coordinate may be (rounding in labelling tools)."""
MAX_CLASSES = 1000
RATIO_FLOOR_BYTES = 64 * 1024
"""Entries smaller than this are not held to the compression ratio (a tiny label file of
repeated digits compresses very well and is harmless)."""


@dataclass(frozen=True)
class Limits:
    """What one dataset zip may hold."""

    max_bytes: int
    max_entries: int
    max_uncompressed_bytes: int
    max_ratio: float
    max_pixels: int


@dataclass(frozen=True)
class Layout:
    """What data.yaml says: class names, image folders per split, keypoints (pose)."""

    root: str
    names: list[str]
    splits: dict[str, str]
    kpt_shape: tuple[int, int] | None = None
    flip_idx: list[int] | None = None


@dataclass(frozen=True)
class Contents:
    """What the check found in a zip."""

    layout: Layout
    task: Task
    images: dict[str, int]
    objects: int


@dataclass(frozen=True)
class DatasetInfo:
    """A stored dataset's description."""

    id: str
    name: str
    class_names: list[str]
    train_images: int
    val_images: int
    objects: int
    task: Task
    sha256: str
    size_bytes: int
    created: datetime
    kpt_shape: tuple[int, int] | None = None

    def to_json(self) -> str:
        """The description stored with the object."""
        return json.dumps({**asdict(self), "task": self.task.value}, default=str)

    @classmethod
    def from_json(cls, text: str) -> DatasetInfo:
        """The description as stored."""
        values = json.loads(text)
        shape = values.get("kpt_shape")
        return cls(
            **{
                **values,
                "task": Task(values["task"]),
                "created": datetime.fromisoformat(values["created"]),
                "kpt_shape": tuple(shape) if shape else None,
            }
        )


# Checking.


def check(data: bytes, limits: Limits) -> Contents:
    """Checks a dataset zip whole: structure, sizes, data.yaml, every image and label.

    Raises:
        ResourceExhausted: Too large, too many entries, too much uncompressed, a bomb by ratio.
        InvalidArgument: Not a zip, an unsafe path, no or a bad data.yaml, a missing folder, an
            undecodable image, a bad label line (file and line named).
    """
    check_size(len(data), limits)
    with _open_zip(data) as archive:
        members = _safe_members(archive, limits)
        layout = _read_layout(archive, members)
        images = {split: _split_images(layout, split, members) for split in layout.splits}
        task, objects = _check_labels(archive, layout, images, members)
        for paths in images.values():
            for path in paths:
                decode(_read(archive, members[path]), max_pixels=limits.max_pixels, field=path)
    counts = {split: len(paths) for split, paths in images.items()}
    return Contents(layout, task, counts, objects)


def check_size(size: int, limits: Limits) -> None:
    """Raises ResourceExhausted for a zip larger than the limit."""
    if size > limits.max_bytes:
        raise ResourceExhausted.too_large("the dataset zip (bytes)", size, limits.max_bytes)


def _open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, EOFError) as err:
        raise InvalidArgument.for_field(FIELD, "is not a zip file") from err


def _read(archive: zipfile.ZipFile, entry: zipfile.ZipInfo) -> bytes:
    """An entry's bytes (never more than its declared size; zipfile checks the CRC)."""
    try:
        return archive.read(entry)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise InvalidArgument.for_field(FIELD, f"{entry.filename}: cannot be read ({err})") from err


def _safe_members(archive: zipfile.ZipFile, limits: Limits) -> dict[str, zipfile.ZipInfo]:
    """The zip's files by path, after the checks on every entry's path, size and ratio."""
    entries = archive.infolist()
    if len(entries) > limits.max_entries:
        raise ResourceExhausted.too_large(
            "the dataset zip (entries)", len(entries), limits.max_entries
        )
    total = sum(entry.file_size for entry in entries)
    if total > limits.max_uncompressed_bytes:
        raise ResourceExhausted.too_large(
            "the dataset zip (uncompressed bytes)", total, limits.max_uncompressed_bytes
        )
    members: dict[str, zipfile.ZipInfo] = {}
    for entry in entries:
        _check_entry(entry, limits.max_ratio)
        if not entry.is_dir():
            members[entry.filename] = entry
    return members


def _check_entry(entry: zipfile.ZipInfo, max_ratio: float) -> None:
    name = entry.filename
    if stat.S_ISLNK(entry.external_attr >> 16):
        raise InvalidArgument.for_field(FIELD, f"{name}: is a symbolic link")
    if not _safe_path(name):
        raise InvalidArgument.for_field(FIELD, f"{name}: a path outside the archive")
    if entry.flag_bits & 0x1:
        raise InvalidArgument.for_field(FIELD, f"{name}: is encrypted")
    if entry.file_size > RATIO_FLOOR_BYTES:
        ratio = entry.file_size / max(1, entry.compress_size)
        if ratio > max_ratio:
            raise ResourceExhausted(
                f"{FIELD}: {name} expands {ratio:.0f} times, more than the limit of "
                f"{max_ratio:g} (a zip bomb?)",
                reason=REQUEST_TOO_LARGE,
            )


def _safe_path(name: str) -> bool:
    """A relative path that stays inside the folder it is extracted to."""
    if not name or "\\" in name or "\0" in name or name.startswith("/"):
        return False
    if len(name) > 1 and name[1] == ":":  # a Windows drive
        return False
    return ".." not in name.split("/")


def _read_layout(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> Layout:
    """data.yaml at the top of the zip, or in its one top folder."""
    found = sorted(
        (path for path in members if posixpath.basename(path) == DATA_YAML),
        key=lambda path: path.count("/"),
    )
    if not found or found[0].count("/") > 1:
        raise InvalidArgument.for_field(FIELD, f"has no {DATA_YAML} at its top")
    path = found[0]
    try:
        document = yaml.safe_load(_read(archive, members[path]))
    except yaml.YAMLError as err:
        raise InvalidArgument.for_field(FIELD, f"{path}: is not valid YAML") from err
    if not isinstance(document, dict):
        raise InvalidArgument.for_field(FIELD, f"{path}: must be a mapping")
    return _layout(path, document)


def _layout(path: str, document: dict[str, Any]) -> Layout:
    root = posixpath.dirname(path)
    names = _names(path, document.get("names"))
    if "nc" in document and document["nc"] != len(names):
        raise InvalidArgument.for_field(
            FIELD, f"{path}: nc is {document['nc']!r} but names has {len(names)} classes"
        )
    splits = {split: _folder(path, root, split, document.get(split)) for split in ("train", "val")}
    kpt_shape = _kpt_shape(path, document.get("kpt_shape"))
    flip_idx = _flip_idx(path, document.get("flip_idx"), kpt_shape)
    return Layout(root, names, splits, kpt_shape, flip_idx)


def _names(path: str, names: object) -> list[str]:
    if isinstance(names, dict):
        if set(names) != set(range(len(names))):
            raise InvalidArgument.for_field(FIELD, f"{path}: names ids must be 0 to n-1")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise InvalidArgument.for_field(FIELD, f"{path}: names must be a list or {{id: name}}")
    if len(names) > MAX_CLASSES:
        raise ResourceExhausted.too_large(f"{path} (classes)", len(names), MAX_CLASSES)
    if not all(isinstance(name, str | int) and str(name).strip() for name in names):
        raise InvalidArgument.for_field(FIELD, f"{path}: every class name must be a non-empty text")
    return [str(name) for name in names]


def _folder(path: str, root: str, split: str, value: object) -> str:
    """A split's image folder, as a path inside the zip."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument.for_field(FIELD, f"{path}: {split} must name an image folder")
    folder = value.strip().removeprefix("./").rstrip("/")
    if not _safe_path(folder):
        raise InvalidArgument.for_field(FIELD, f"{path}: {split}: {value!r} is outside the archive")
    return posixpath.join(root, folder)


def _kpt_shape(path: str, value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) for v in value)
        or value[0] < 1
        or value[1] not in (2, 3)
    ):
        raise InvalidArgument.for_field(FIELD, f"{path}: kpt_shape must be [keypoints, 2 or 3]")
    return value[0], value[1]


def _flip_idx(path: str, value: object, kpt_shape: tuple[int, int] | None) -> list[int] | None:
    if value is None or kpt_shape is None:
        return None
    if not isinstance(value, list) or sorted(value) != list(range(kpt_shape[0])):
        raise InvalidArgument.for_field(FIELD, f"{path}: flip_idx must order the keypoints")
    return value


def _split_images(layout: Layout, split: str, members: dict[str, zipfile.ZipInfo]) -> list[str]:
    folder = layout.splits[split]
    if "images" not in folder.split("/"):  # ultralytics finds labels by images/ -> labels/
        raise InvalidArgument.for_field(
            FIELD, f"{DATA_YAML}: {split}: {folder!r} must be a folder under an images/ folder"
        )
    prefix = folder + "/"
    for path in members:
        if path.startswith(prefix) and posixpath.splitext(path)[1].lower() in OTHER_IMAGE_SUFFIXES:
            raise InvalidArgument.for_field(FIELD, f"{path}: images must be JPEG, PNG or WebP")
    images = sorted(
        path
        for path in members
        if path.startswith(prefix) and posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise InvalidArgument.for_field(FIELD, f"{split}: no images in {folder}/")
    return images


def label_path(image: str) -> str:
    """Where ultralytics reads an image's labels: the last images/ -> labels/, suffix .txt."""
    head, _, tail = f"/{image}".rpartition("/images/")
    return f"{head}/labels/{posixpath.splitext(tail)[0]}.txt".lstrip("/")


def _check_labels(
    archive: zipfile.ZipFile,
    layout: Layout,
    images: dict[str, list[str]],
    members: dict[str, zipfile.ZipInfo],
) -> tuple[Task, int]:
    """The task all label lines agree on and the number of objects."""
    reader = _LabelReader(layout)
    for paths in images.values():
        for image in paths:
            path = label_path(image)
            if path in members:  # no label file: a background image
                reader.read(path, _read(archive, members[path]))
    if reader.task is None:
        raise InvalidArgument.for_field(FIELD, "has no labelled objects")
    return reader.task, reader.objects


class _LabelReader:
    """Checks label files line by line, holding every line to the task of the first one."""

    def __init__(self, layout: Layout) -> None:
        self._classes = len(layout.names)
        self._kpt_shape = layout.kpt_shape
        self.task: Task | None = None
        self._first = ""
        self.objects = 0

    def read(self, path: str, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidArgument.for_field(FIELD, f"{path}: is not UTF-8 text") from err
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                self._line(f"{path} line {number}", line.split())
                self.objects += 1

    def _line(self, where: str, fields: list[str]) -> None:
        values = _numbers(where, fields)
        task = self._task_of(where, len(values))
        if self.task is None:
            self.task, self._first = task, where
        elif task is not self.task:
            raise InvalidArgument.for_field(
                FIELD, f"{where}: a {task.value} label, but {self._first} is {self.task.value}"
            )
        _check_class(where, values[0], self._classes)
        _check_coordinates(where, values[1:], self._coordinates(task, len(values) - 1))

    def _task_of(self, where: str, count: int) -> Task:
        if self._kpt_shape is not None:
            expected = 5 + self._kpt_shape[0] * self._kpt_shape[1]
            if count != expected:
                raise InvalidArgument.for_field(
                    FIELD,
                    f"{where}: {count} values; kpt_shape {list(self._kpt_shape)} "
                    f"needs {expected} (class cx cy w h, then the keypoints)",
                )
            return Task.POSE
        if count == 5:
            return Task.DETECT
        if count >= 7 and count % 2 == 1:
            return Task.SEGMENT
        raise InvalidArgument.for_field(
            FIELD,
            f"{where}: {count} values; a label is 'class cx cy w h' (detect) or "
            "'class x1 y1 x2 y2 x3 y3 ...' (segment, 3 points or more)",
        )

    def _coordinates(self, task: Task, count: int) -> list[bool]:
        """Which values after the class are coordinates (keypoint visibility is not)."""
        if task is not Task.POSE or self._kpt_shape is None or self._kpt_shape[1] == 2:
            return [True] * count
        keypoints = [i % 3 != 2 for i in range(count - 4)]
        return [True] * 4 + keypoints


def _numbers(where: str, fields: list[str]) -> list[float]:
    try:
        values = [float(value) for value in fields]
    except ValueError as err:
        raise InvalidArgument.for_field(FIELD, f"{where}: not a number ({err})") from err
    if not all(math.isfinite(value) for value in values):
        raise InvalidArgument.for_field(FIELD, f"{where}: a value is not finite")
    return values


def _check_class(where: str, value: float, classes: int) -> None:
    if value != int(value) or not 0 <= value < classes:
        raise InvalidArgument.for_field(
            FIELD, f"{where}: class {fields_text(value)} is not one of 0 to {classes - 1}"
        )


def fields_text(value: float) -> str:
    """A label value as written (an integer without its .0)."""
    return str(int(value)) if value == int(value) else str(value)


def _check_coordinates(where: str, values: list[float], coordinates: list[bool]) -> None:
    for position, (value, is_coordinate) in enumerate(zip(values, coordinates, strict=True), 2):
        if is_coordinate and not -TOLERANCE <= value <= 1 + TOLERANCE:
            raise InvalidArgument.for_field(
                FIELD,
                f"{where}: value {position} ({fields_text(value)}) is not a normalised "
                "coordinate in [0, 1]",
            )


# Extracting (for training).


def extract(data: bytes, folder: Path, limits: Limits) -> Path:
    """Extracts a checked dataset zip into `folder` and writes the data.yaml ultralytics reads
    there (its path set to the folder, only the keys it needs). Returns that data.yaml."""
    with _open_zip(data) as archive:
        members = _safe_members(archive, limits)  # again: never trust what is stored blindly
        layout = _read_layout(archive, members)
        base = folder.resolve()
        for path, entry in members.items():
            target = (base / path).resolve()
            if not target.is_relative_to(base):  # pragma: no cover - _safe_path forbids it
                raise InvalidArgument.for_field(FIELD, f"{path}: a path outside the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(entry) as source, target.open("wb") as sink:
                while chunk := source.read(1024 * 1024):
                    sink.write(chunk)
    return _write_yaml(base, layout)


def _write_yaml(base: Path, layout: Layout) -> Path:
    root = base / layout.root
    document: dict[str, Any] = {
        "path": str(root),
        "train": posixpath.relpath(layout.splits["train"], layout.root or "."),
        "val": posixpath.relpath(layout.splits["val"], layout.root or "."),
        "names": dict(enumerate(layout.names)),
    }
    if layout.kpt_shape is not None:
        document["kpt_shape"] = list(layout.kpt_shape)
    if layout.flip_idx is not None:
        document["flip_idx"] = layout.flip_idx
    path = root / "nexus-data.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# Storing.


class DatasetStore:
    """Checked dataset zips in the object store bucket `nexus_vision_datasets`."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._store: ObjectStore | None = None

    async def start(self) -> None:
        """Creates or binds the bucket."""
        self._store = await open_object_store(self._js, BUCKET)

    async def put(self, name: str, data: bytes, contents: Contents) -> DatasetInfo:
        """Stores a checked zip under a new id (the same id when an idempotent call runs again)."""
        info = DatasetInfo(
            id=new_id("dataset"),
            name=name,
            class_names=list(contents.layout.names),
            train_images=contents.images.get("train", 0),
            val_images=contents.images.get("val", 0),
            objects=contents.objects,
            task=contents.task,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            created=datetime.now(UTC),
            kpt_shape=contents.layout.kpt_shape,
        )
        meta = ObjectMeta(name=info.id, description=info.to_json())
        with nats_unavailable("store the dataset"):
            await self._bucket().put(info.id, data, meta=meta)
        return info

    async def info(self, dataset_id: str) -> DatasetInfo:
        """A dataset's description.

        Raises:
            NotFound: No such dataset.
        """
        with _stored("read the dataset", dataset_id):
            found = await self._bucket().get_info(dataset_id)
        return DatasetInfo.from_json(found.description or "{}")

    async def fetch(self, dataset_id: str) -> bytes:
        """A dataset's zip.

        Raises:
            NotFound: No such dataset.
        """
        with _stored("read the dataset", dataset_id):
            result = await self._bucket().get(dataset_id)
        return result.data or b""

    def _bucket(self) -> ObjectStore:
        assert self._store is not None, "start() first"
        return self._store


@contextmanager
def _stored(action: str, dataset_id: str) -> Iterator[None]:
    """A missing object as NotFound, NATS errors as Unavailable."""
    with nats_unavailable(action):
        try:
            yield
        except NotFoundError as err:
            raise NotFound(f"dataset {dataset_id!r} does not exist") from err
