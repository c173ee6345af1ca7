"""Helpers for vision tests: images to work on, settings with small limits, a client."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.api.operations.v1 import operations_pb2_grpc as ops_grpc
from nexus.api.vision.v1 import vision_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.vision.settings import VisionSettings

ASSETS = Path(str(importlib.util.find_spec("ultralytics").origin)).parent / "assets"  # no import
"""Photos that ship with ultralytics: bus.jpg, zidane.jpg."""
SHARED = Path(
    os.environ.get("NEXUS_SHARED_DATA")
    or Path(__file__).resolve().parents[3].parent / "shared/data"
)
VISION_DATA = SHARED / "vision"
"""The benchmark photos beside the repository (tests that need them skip without them)."""


def small_settings(**overrides: object) -> VisionSettings:
    """Settings with small limits, on a free port."""
    values: dict[str, object] = {"grpc_port": 0, "max_images": 4, "device": "cpu"}
    values.update(overrides)
    return VisionSettings(**values)  # type: ignore[arg-type]


class Client:
    """Stubs on one channel, sending an API key with every call."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.vision = pb_grpc.VisionServiceStub(channel)
        self.models = models_grpc.ModelRegistryServiceStub(channel)
        self.operations = ops_grpc.OperationsServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()


@contextlib.asynccontextmanager
async def client_of(host: ServiceHost, key: str) -> AsyncIterator[Client]:
    """A client of a running service."""
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}", options=options) as channel:
        yield Client(channel, key)
