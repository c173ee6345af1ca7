"""Helpers for anomaly tests: real API keys, stubs with a key, generated data."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import numpy as np

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.common.server import ServiceHost
from nexus.common.testing.keys import make_key

__all__ = ["Client", "StartHost", "cloud", "make_key", "points", "unique"]

StartHost = Callable[..., Coroutine[Any, Any, ServiceHost]]
"""Starts an anomaly service replica with setting overrides (the `start_anomaly` fixture)."""


class Client:
    """Stubs on one channel, sending an API key with every call."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.anomaly = pb_grpc.AnomalyServiceStub(channel)
        self.models = models_grpc.ModelRegistryServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),)


def unique(prefix: str = "det") -> str:
    """A name no other test uses (the session NATS is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cloud(n: int = 300, d: int = 4, seed: int = 0) -> np.ndarray:
    """Normal points: a Gaussian cloud."""
    return np.random.default_rng(seed).normal(size=(n, d))


def points(rows: np.ndarray) -> list[pb.Point]:
    """Rows as Point messages with ids."""
    return [pb.Point(values=row.tolist(), id=f"p{i}") for i, row in enumerate(rows)]
