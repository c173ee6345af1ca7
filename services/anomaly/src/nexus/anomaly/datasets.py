"""Datasets uploaded once and referenced by id when training.

Rows are stored in the JetStream object store as an `.npz` of float64 arrays (loaded with
`allow_pickle=False`, so a stored dataset can never carry code); the description of the object
holds the metadata as JSON.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
from nats.js.api import ObjectMeta
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from nexus.anomaly.detectors import validate_matrix
from nexus.common.errors import InvalidArgument, NotFound, ResourceExhausted
from nexus.common.kv import open_object_store

BUCKET = "nexus_anomaly_datasets"


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a stored dataset."""

    id: str
    name: str
    rows: int
    features: int
    feature_names: list[str]
    sha256: str
    created: datetime
    has_labels: bool


@dataclass(frozen=True)
class Table:
    """Rows of features, with optional labels (1 = anomaly)."""

    X: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    y: np.ndarray | None = None


@dataclass(frozen=True)
class CsvUpload:
    """CSV text to parse into a table (on a worker thread: it may be megabytes)."""

    data: bytes
    label_column: str = ""


def parse_csv(data: bytes, *, label_column: str = "", max_rows: int, max_features: int) -> Table:
    """Parses CSV text with a header row into a table; every value must be a number.

    Raises:
        InvalidArgument: Not UTF-8, no header, a non-numeric value (row and column named), or a
            label column that is missing.
    """
    try:
        reader = csv.reader(io.StringIO(data.decode("utf-8")))
        header = [name.strip() for name in next(reader)]
    except (UnicodeDecodeError, StopIteration) as err:
        raise InvalidArgument.for_field("csv", "must be UTF-8 CSV with a header row") from err
    label_at = _label_index(header, label_column)
    values = [_parse_row(row, line) for line, row in enumerate(reader, start=2) if row]
    matrix = validate_matrix(
        values, field="csv", max_rows=max_rows, max_features=max_features + 1, row_field=""
    )
    if matrix.shape[1] != len(header):
        raise InvalidArgument.for_field(
            "csv", f"rows have {matrix.shape[1]} values, header has {len(header)}"
        )
    if label_at is None:
        return Table(matrix, header)
    features = np.delete(matrix, label_at, axis=1)
    return Table(features, [h for i, h in enumerate(header) if i != label_at], matrix[:, label_at])


def _label_index(header: list[str], label_column: str) -> int | None:
    if not label_column:
        return None
    if label_column not in header:
        raise InvalidArgument.for_field("label_column", f"{label_column!r} is not a CSV column")
    return header.index(label_column)


def _parse_row(row: list[str], line: int) -> list[float]:
    try:
        return [float(value) for value in row]
    except ValueError as err:
        raise InvalidArgument.for_field("csv", f"line {line}: {err}") from err


class DatasetStore:
    """Datasets in the object store bucket `nexus_anomaly_datasets`."""

    def __init__(self, js: JetStreamContext, *, max_bytes: int) -> None:
        self._js = js
        self._max_bytes = max_bytes
        self._store: ObjectStore | None = None

    async def start(self) -> None:
        """Creates or binds the bucket."""
        self._store = await open_object_store(self._js, BUCKET)

    async def put(self, name: str, table: Table) -> DatasetInfo:
        """Stores a table under a new id."""
        payload = _to_npz(table)
        if len(payload) > self._max_bytes:
            raise ResourceExhausted.too_large("the dataset (bytes)", len(payload), self._max_bytes)
        info = DatasetInfo(
            id=uuid.uuid4().hex,
            name=name,
            rows=int(table.X.shape[0]),
            features=int(table.X.shape[1]),
            feature_names=list(table.feature_names),
            sha256=hashlib.sha256(payload).hexdigest(),
            created=datetime.now(UTC),
            has_labels=table.y is not None,
        )
        meta = ObjectMeta(name=info.id, description=json.dumps(asdict(info), default=str))
        await self._bucket().put(info.id, payload, meta=meta)
        return info

    async def get(self, dataset_id: str) -> Table:
        """Loads a dataset's rows; NotFound if there is no such id."""
        try:
            result = await self._bucket().get(dataset_id)
        except NotFoundError as err:
            raise NotFound(f"dataset {dataset_id!r} does not exist") from err
        meta = json.loads(result.info.description or "{}")
        return _from_npz(result.data or b"", meta.get("feature_names", []))

    def _bucket(self) -> ObjectStore:
        assert self._store is not None, "start() first"
        return self._store


def _to_npz(table: Table) -> bytes:
    buffer = io.BytesIO()
    if table.y is None:
        np.savez(buffer, X=table.X)
    else:
        np.savez(buffer, X=table.X, y=table.y)
    return buffer.getvalue()


def _from_npz(payload: bytes, feature_names: list[str]) -> Table:
    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        y = arrays["y"] if "y" in arrays.files else None
        return Table(arrays["X"], feature_names, y)
