"""An MLP autoencoder (torch): the score is a point's reconstruction error.

Small and fast on purpose: one hidden layer each side of a bottleneck, Adam on standardised data,
minibatches, and a cap on optimiser steps so that 5,000 x 100 trains in seconds on two cores.
Training is deterministic for a seed on CPU: the weights are drawn under a forked RNG and the
batches are shuffled by a private generator, so the global torch RNG is left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nexus.anomaly.detectors._algorithm import Algorithm
from nexus.anomaly.detectors._base import Detector, as_scores
from nexus.anomaly.detectors._params import ParamSpec, choice, integer, number
from nexus.anomaly.detectors._types import FloatArray
from nexus.common.errors import InvalidArgument

_SCORE_CHUNK = 8192
_MIN_STD = 1e-12


class AutoencoderDetector(Detector):
    """Reconstruction error of a dense autoencoder: d -> hidden -> bottleneck -> hidden -> d.

    Pickles without torch internals: the weights travel as numpy arrays and the network is
    rebuilt on load, on the configured device when it is there and on the CPU otherwise.
    """

    algorithm: ClassVar[Algorithm] = Algorithm.AUTOENCODER
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("hidden_size", 0, integer(0, 4096), "hidden width; 0 = min(64, max(8, d))"),
        ParamSpec("bottleneck", 0, integer(0, 4096), "code width; 0 = max(2, min(32, d // 2))"),
        ParamSpec("epochs", 50, integer(1, 10_000), "most passes over the data"),
        ParamSpec("max_steps", 2000, integer(1, 1_000_000), "most optimiser steps in all"),
        ParamSpec("batch_size", 64, integer(1, 65_536), "rows per minibatch"),
        ParamSpec("learning_rate", 1e-3, number(0.0, 1.0, open_below=True), "Adam step size"),
        ParamSpec("weight_decay", 1e-5, number(0.0, 1.0), "Adam L2 penalty"),
        ParamSpec("device", "cpu", choice("cpu", "cuda", "auto"), "'auto' = cuda when present"),
        ParamSpec("threads", 1, integer(1, 256), "torch CPU threads while training"),
    )

    def fit(self, x: FloatArray) -> None:
        """Trains the network to reconstruct the standardised rows of `x`."""
        self._device = _device(self._str("device"), strict=True)
        self._mean = x.mean(axis=0)
        std = x.std(axis=0)
        self._std = np.where(std > _MIN_STD, std, 1.0)
        with _threads(self._int("threads")):
            self._net = self._build(x.shape[1])
            self._train(self._tensor(x))

    def score(self, x: FloatArray) -> FloatArray:
        """Mean squared reconstruction error per row, in standardised units."""
        with torch.no_grad():
            self._net.eval()
            parts = [
                _row_mse(self._net, self._tensor(x[start : start + _SCORE_CHUNK]))
                for start in range(0, x.shape[0], _SCORE_CHUNK)
            ]
        return as_scores(np.concatenate(parts))

    def _build(self, n_features: int) -> nn.Sequential:
        hidden = self._int("hidden_size") or min(64, max(8, n_features))
        code = self._int("bottleneck") or max(2, min(32, n_features // 2))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = nn.Sequential(
                nn.Linear(n_features, hidden), nn.ReLU(),
                nn.Linear(hidden, code), nn.ReLU(),
                nn.Linear(code, hidden), nn.ReLU(),
                nn.Linear(hidden, n_features),
            )  # fmt: skip
        return net.to(self._device)

    def _train(self, data: torch.Tensor) -> None:
        optimiser = torch.optim.Adam(
            self._net.parameters(),
            lr=self._float("learning_rate"),
            weight_decay=self._float("weight_decay"),
        )
        self._net.train()
        for batch in self._batches(data):
            optimiser.zero_grad()
            loss = nn.functional.mse_loss(self._net(batch), batch)
            torch.autograd.backward(loss)
            optimiser.step()

    def _batches(self, data: torch.Tensor) -> Iterator[torch.Tensor]:
        """Shuffled minibatches, epoch after epoch, until `epochs` or `max_steps` runs out."""
        size = self._int("batch_size")
        per_epoch = -(-data.shape[0] // size)
        epochs = max(1, min(self._int("epochs"), self._int("max_steps") // per_epoch))
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(epochs):
            order = torch.randperm(data.shape[0], generator=generator).to(data.device)
            for start in range(0, data.shape[0], size):
                yield data[order[start : start + size]]

    def _tensor(self, x: FloatArray) -> torch.Tensor:
        scaled = ((x - self._mean) / self._std).astype(np.float32)
        return torch.from_numpy(scaled).to(self._device)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if "_net" in state:
            state["_net"] = {k: v.detach().cpu().numpy() for k, v in self._net.state_dict().items()}
            state["_device"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_net" in state:
            weights = state["_net"]
            self._device = _device(self._str("device"), strict=False)
            self._net = self._build(weights["0.weight"].shape[1])
            self._net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})


def _row_mse(net: nn.Module, batch: torch.Tensor) -> np.ndarray[Any, np.dtype[np.float64]]:
    errors = ((net(batch) - batch) ** 2).mean(dim=1)
    return np.asarray(errors.cpu().numpy(), dtype=np.float64)


def _device(name: str, *, strict: bool) -> torch.device:
    """The torch device for `name`; without CUDA, 'cuda' fails when training (`strict`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        if strict:
            raise InvalidArgument.for_field("params.device", "'cuda' but no GPU is available")
        return torch.device("cpu")
    return torch.device(name)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Caps torch's intra-op threads for the block; the setting is process-wide, so restore it.

    Scoring leaves the setting alone: it runs concurrently on the service's worker threads,
    where a set/restore pair could interleave, and a forward pass is cheap either way.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
