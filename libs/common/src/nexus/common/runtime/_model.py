"""What a service author writes: a `Model` subclass with `load`, `predict` and `unload`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from nexus.common.errors import FailedPrecondition
from nexus.common.registry import ModelRegistry, ModelVersionInfo

I = TypeVar("I")  # noqa: E741 - the input type of a model, by convention
O = TypeVar("O")  # noqa: E741 - the output type of a model, by convention
T = TypeVar("T")


class Runner(Protocol):
    """Runs a blocking callable on the service's executor and awaits its result."""

    def __call__(self, work: Callable[[], T], /) -> Awaitable[T]: ...


@dataclass(frozen=True)
class Batching:
    """How a model's concurrent predictions are merged into one call of `predict_batch`.

    Attributes:
        max_batch_size: Most requests per call.
        max_wait_ms: Longest the first request of a batch waits for company.
        max_concurrent_batches: Batches of one model version running at once; while they run,
            the next batch fills up.
    """

    max_batch_size: int
    max_wait_ms: float
    max_concurrent_batches: int = 1


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, handed to its constructor.

    Attributes:
        name: The registry name (or, for a model outside the registry, the name it serves as).
        version: The registry version ("" outside the registry).
        info: The version's registry record (None outside the registry).
        registry: The registry that holds it (None outside the registry).
        run: Runs a blocking callable on the service's executor.
    """

    name: str
    version: str
    info: ModelVersionInfo | None
    registry: ModelRegistry | None
    run: Runner

    async def artifact(self) -> bytes:
        """The version's artifact bytes, checked against their sha256.

        Raises:
            FailedPrecondition: The model is not from the registry, or its artifact is damaged.
        """
        return await self._registry().load_artifact(self.name, self.version)

    async def signed_object(self) -> object:
        """The object that the registry pickled and signed, unpickled on the executor.

        Raises:
            FailedPrecondition: Not from the registry, no signing key, or a bad signature.
        """
        registry = self._registry()
        data = await registry.load_artifact(self.name, self.version)
        return await self.run(lambda: registry.loads_signed(data))

    def _registry(self) -> ModelRegistry:
        if self.registry is None or self.info is None:
            raise FailedPrecondition(f"model {self.name!r} is not from the model registry")
        return self.registry


class Model(Generic[I, O]):
    """One loaded model version, as the runtime serves it.

    A subclass implements `load` (async: fetch with `self.source`, then put CPU work on
    `self.source.run`) and `predict`; the runtime calls `predict`, `predict_batch`,
    `predict_stream` and `unload` on the service's executor, never on the event loop.

    Attributes:
        batching: Set (in the constructor or as a class attribute) to merge concurrent
            predictions into one `predict_batch` call; None predicts each request alone.
    """

    batching: Batching | None = None

    def __init__(self, source: ModelSource) -> None:
        self.source = source

    async def load(self) -> None:
        """Makes the model ready to predict. The default does nothing."""

    def predict(self, inputs: I) -> O:
        """The output for one request (blocking).

        Raises:
            NotImplementedError: The model only streams.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement predict")

    def predict_batch(self, batch: list[I]) -> list[O]:
        """The outputs of a batch of requests, in order (blocking). Override to predict them as
        one matrix; the default predicts each alone."""
        return [self.predict(inputs) for inputs in batch]

    def predict_stream(self, inputs: I) -> Iterator[O]:
        """Outputs one piece at a time (blocking iterator); the default yields `predict`."""
        yield self.predict(inputs)

    def unload(self) -> None:
        """Lets go of what `load` took (blocking). Called once no request uses the model."""

    def count(self, inputs: I) -> int:
        """Predictions in one request, for the predictions counter (default 1)."""
        return 1

    def size_bytes(self) -> int:
        """Memory the loaded model holds, for eviction by bytes. The default is the size of
        its artifact, a fair estimate for pickled estimators; override when it is not."""
        return self.source.info.size_bytes if self.source.info is not None else 0
