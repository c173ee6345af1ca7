"""A fit of 10,000 series as an operation: its progress streams (series done rising, an ETA),
batched (the operation's record is written a few times a second, not once a series), and a
cancel midway ends it CANCELLED with no version registered."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pandas as pd
import pytest
from forecast_testing import Client, unique
from nats.aio.client import Client as Nats

from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.forecast.server import create
from nexus.forecast.settings import ForecastSettings

pytestmark = pytest.mark.timeout(120)
SERIES, LENGTH = 10_000, 28
UPDATES_SEEN = 3
"""Progress updates watched during fitting before the cancel."""


def long_format() -> bytes:
    """10,000 daily random walks of four weeks, as Parquet."""
    rng = np.random.default_rng(9)
    frame = pd.DataFrame(
        {
            "unique_id": np.repeat([f"s{i}" for i in range(SERIES)], LENGTH),
            "ds": np.tile(pd.date_range("2024-01-01", periods=LENGTH, freq="D"), SERIES),
            "y": 100 + rng.normal(size=(SERIES, LENGTH)).cumsum(axis=1).ravel(),
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


async def test_a_ten_thousand_series_fit_streams_progress_and_is_cancelled_midway(
    start_service: StartService, nexus_settings: NexusSettings, nats_client: Nats
) -> None:
    """AutoTheta on each series (a few ms a series: the whole fit would take tens of seconds
    here), cancelled after three progress updates of the fitting stage."""
    host = await start_service(create, ForecastSettings(grpc_port=0, max_series=SERIES))
    key = await make_key(nexus_settings, "*")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        client = Client(channel, key)
        uploaded = await client.forecast.UploadDataset(
            pb.UploadDatasetRequest(data=long_format(), format=pb.DATASET_FORMAT_PARQUET),
            metadata=client.metadata,
        )
        name = unique()
        data = pb.SeriesData(
            dataset_id=uploaded.dataset.id, options=pb.SeriesOptions(frequency="D")
        )
        fit = pb.FitRequest(name=name, data=data, horizon=7, models=[pb.MODEL_AUTO_THETA])
        started = await client.forecast.StartFit(
            pb.StartFitRequest(fit=fit), metadata=client.metadata
        )
        operation = started.operation.name
        writes = await nats_client.subscribe(
            f"$KV.nexus_operations.forecast.{operation.rsplit('/', 1)[-1]}"
        )
        seen = await watch_and_cancel(client, operation)
        model = client.models.GetModel(
            models_pb.GetModelRequest(service="forecast", name=name), metadata=client.metadata
        )
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await model
        stored = writes.pending_msgs

    fitting = [o.progress for o in seen if o.progress.stage == "fitting" and not o.done]
    done = [p.metrics["series_done"] for p in fitting if p.metrics.get("series_done")]
    assert len(set(done)) >= UPDATES_SEEN
    assert done == sorted(done)  # rising (a cancel request is written with the same count)
    assert all(p.eta.ToTimedelta().total_seconds() > 0 for p in fitting if p.metrics)
    last = seen[-1]
    assert last.state == ops_pb.OPERATION_STATE_CANCELLED
    assert 0 < last.progress.metrics["series_done"] < SERIES  # cancelled midway
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # nothing registered
    # Batched: a write per chunk at most (100 chunks), and at most 5 a second within a stage.
    assert 0 < stored < SERIES / 50


async def watch_and_cancel(client: Client, operation: str) -> list[ops_pb.Operation]:
    """Every state of the operation until it is done, cancelling it once UPDATES_SEEN counts
    of series done were seen (a record may be written again with the same count, such as its
    lease renewed while a slow machine fits)."""
    stream = client.operations.WatchOperation(
        ops_pb.WatchOperationRequest(name=operation), metadata=client.metadata
    )
    seen: list[ops_pb.Operation] = []
    cancelled = False
    async for reply in stream:
        seen.append(reply.operation)
        updates = {o.progress.metrics.get("series_done", 0) for o in seen} - {0}
        if len(updates) >= UPDATES_SEEN and not cancelled:
            cancelled = True
            await client.operations.CancelOperation(
                ops_pb.CancelOperationRequest(name=operation), metadata=client.metadata
            )
    return seen
