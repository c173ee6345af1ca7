"""Helpers for forecast tests: simulated series with known generating models, requests, stubs."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.api.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.operations.v1 import operations_pb2_grpc as ops_grpc
from nexus.forecast.forecasting import FittedSeries, FittedSet, Series, SharedModel

START = pd.Timestamp("2024-01-01")


class Client:
    """Stubs on one channel, sending an API key with every call."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.forecast = pb_grpc.ForecastServiceStub(channel)
        self.models = models_grpc.ModelRegistryServiceStub(channel)
        self.operations = ops_grpc.OperationsServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),)


async def watch(client: Client, name: str) -> list[ops_pb.Operation]:
    """Every state of an operation until it is done."""
    stream = client.operations.WatchOperation(
        ops_pb.WatchOperationRequest(name=name), metadata=client.metadata
    )
    return [reply.operation async for reply in stream]


def unique(prefix: str = "fc") -> str:
    """A name no other test uses (the session NATS is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def seasonal_random_walk(
    n: int, season: int, rng: np.random.Generator, sd: float = 1.0
) -> np.ndarray:
    """y[t] = y[t - season] + noise: seasonal naive is the true model (exact for h <= season)."""
    y = np.empty(n)
    y[:season] = 50 + 10 * rng.normal(size=season)
    for t in range(season, n):
        y[t] = y[t - season] + rng.normal(0, sd)
    return y


def local_level(
    n: int, rng: np.random.Generator, level_sd: float = 0.5, noise_sd: float = 1.0
) -> np.ndarray:
    """A random walk seen through noise: simple exponential smoothing (ETS A,N,N) is the true
    model."""
    return 100 + np.cumsum(rng.normal(0, level_sd, n)) + rng.normal(0, noise_sd, n)


def logistic_map(n: int, rng: np.random.Generator, noise_sd: float = 0.01) -> np.ndarray:
    """A nonlinear lag process: x[t] = 3.6 x[t-1] (1 - x[t-1]) + noise, scaled to 50..70. A
    learner on lags fits it; no linear or smoothing model can."""
    x = np.empty(n)
    x[0] = rng.uniform(0.2, 0.8)
    for t in range(1, n):
        x[t] = np.clip(3.6 * x[t - 1] * (1 - x[t - 1]) + rng.normal(0, noise_sd), 0.01, 0.99)
    return 50 + 20 * x


def seasonal_ar(n: int, season: int, rng: np.random.Generator, phi: float = 0.7) -> np.ndarray:
    """A sine season plus an AR(1) with unit noise."""
    noise, x = rng.normal(size=n), np.zeros(n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return 100 + 5 * np.sin(2 * np.pi * np.arange(n) / season) + x


def hourly(values: np.ndarray, series_id: str = "s") -> Series:
    """An hourly domain series from 2024-01-01."""
    return Series(series_id, pd.date_range(START, periods=len(values), freq="h"), values)


def proto_series(
    values: Sequence[float], series_id: str = "s", freq: str = "h", skip: Sequence[int] = ()
) -> pb.Series:
    """A Series message on a regular grid (positions in `skip` left out)."""
    index = pd.date_range(START, periods=len(values), freq=freq)
    keep = [i for i in range(len(values)) if i not in set(skip)]
    stamps = []
    for i in keep:
        stamp = Timestamp()
        stamp.FromNanoseconds(int(index[i].value))
        stamps.append(stamp)
    return pb.Series(id=series_id, timestamps=stamps, values=[float(values[i]) for i in keep])


def slowing_growth(n: int, season: int, rng: np.random.Generator) -> np.ndarray:
    """Growth that slows (a logarithm at a random rate) plus a sine season and a little noise:
    seasonal naive falls behind it and a linear drift (AutoTheta) overshoots it, so their errors
    have opposite signs and their mean forecasts better than either."""
    t = np.arange(n)
    growth = 30 * rng.uniform(0.5, 1.5) * np.log1p(t / 10)
    return 100 + growth + 5 * np.sin(2 * np.pi * t / season) + rng.normal(0, 0.3, n)


def round_trip(
    horizon: int, fitted: Sequence[FittedSeries], models: Mapping[str, SharedModel]
) -> FittedSet:
    """A fitted set packed from these series and shared models, pickled and read back as the
    registry stores it."""
    packed = FittedSet(horizon)
    for f in fitted:
        packed.add(f)
    for key, model in models.items():
        packed.add_shared(key, model)
    loaded = pickle.loads(pickle.dumps(packed))
    assert isinstance(loaded, FittedSet)
    return loaded
