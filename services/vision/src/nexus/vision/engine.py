"""The vision service's domain, gathered for the servicer: YOLO models on the model runtime,
faces, text, enhancement, datasets and training. Plain Python: no gRPC here."""

from __future__ import annotations

from concurrent.futures import Executor

from nexus.common.events import EventBus
from nexus.common.registry import ModelRegistry
from nexus.vision.settings import VisionSettings


class VisionEngine:
    """What the VisionService RPCs call, over the registry, NATS and the service's executor."""

    def __init__(
        self,
        registry: ModelRegistry,
        bus: EventBus,
        settings: VisionSettings,
        executor: Executor,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._bus = bus
        self._executor = executor

    async def start(self) -> None:
        """Starts the parts that follow NATS."""

    async def warm(self) -> None:
        """Loads what must be ready before SERVING."""

    async def stop(self) -> None:
        """Stops the parts and lets go of the models."""
