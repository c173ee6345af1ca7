"""Neural networks global across a group's series (ADR 0043): an LSTM and a Transformer encoder.

One network learns from every series of a group (as the gradient-boosted `learners` do) on
windows of history: the last `input_size` values in, the next `horizon` values out at once
(direct multi-step). Each window is standardised by its input's mean and standard deviation, so
series of any level and scale train one network; both networks add a linear map of the window to
their output (a shortcut that carries level and season from the first epoch).

- LSTM: a two-layer LSTM over the window's patches (about 16 steps of several
  values: a recurrent pass over a week of hours one by one learned slowly), its last state to
  the horizon.
- Transformer: the window cut into patches (about 16 tokens), each embedded with its position,
  a Transformer encoder over them, all tokens to the horizon.

Training: Adam on the L1 error, shuffled windows (at most WINDOWS_PER_EPOCH per epoch), for
`epochs` or until `max_seconds` have passed. Seeded: on CPU the same series and parameters give
the same network (when the epochs end before `max_seconds`). CUDA when available unless
`use_device("cpu")`; torch's thread setting is left as the process set it.

Intervals (split conformal): the network is first trained on each series less its last
CALIBRATION_HORIZONS horizons; its errors at every origin of that held-out tail, divided by the
window's standard deviation, give per step the quantile of the level; then it trains on the whole
series for a third of the epochs more. An interval is the mean +- that quantile times the
forecast window's standard deviation.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting.models import NEURAL, ModelKind
from nexus.forecast.forecasting.predicting import Forecast, check_calibrated
from nexus.forecast.forecasting.series import Prepared

MIN_INPUT = 16
MAX_INPUT = 512
CALIBRATION_HORIZONS = 2
WINDOWS_PER_EPOCH = 8192
MAX_SCORES = 2001
"""Calibration errors kept per step (beyond it, that many of their quantiles)."""
TOKENS = 16
HEADS = 4
SEED = 0

Params = Mapping[str, float]
DEFAULTS: dict[ModelKind, dict[str, float]] = {
    ModelKind.LSTM: {
        "epochs": 60,
        "max_seconds": 900,
        "hidden_size": 64,
        "layers": 2,
        "learning_rate": 0.003,
        "batch_size": 128,
    },
    ModelKind.TRANSFORMER: {
        "epochs": 60,
        "max_seconds": 900,
        "hidden_size": 32,
        "layers": 2,
        "learning_rate": 0.001,
        "batch_size": 128,
    },
}
MAXIMA = {
    "epochs": 1000,
    "max_seconds": 3600,
    "hidden_size": 512,
    "layers": 4,
    "learning_rate": 1.0,
    "batch_size": 4096,
}
INTEGER = frozenset({"epochs", "hidden_size", "layers", "batch_size"})
_device = "auto"
_SEEDED = threading.Lock()
"""Held while a network's initial weights are drawn from torch's (global) seeded generator."""


def use_device(name: str) -> None:
    """Where networks train: "auto" (CUDA when available) or "cpu"."""
    global _device
    if name not in ("auto", "cpu"):
        raise ValueError(f"device {name!r}: auto or cpu")
    _device = name


def device() -> torch.device:
    """The device networks train on now."""
    cuda = _device == "auto" and torch.cuda.is_available()
    return torch.device("cuda" if cuda else "cpu")


def check_params(kind: ModelKind, params: Params, where: str) -> None:
    """Refuses unknown parameter names and values out of range.

    Raises:
        InvalidArgument: Naming `where`.
    """
    for name, value in params.items():
        if name not in DEFAULTS[kind]:
            raise InvalidArgument.for_field(where, f"{name!r}; known: {', '.join(DEFAULTS[kind])}")
        low = 1.0 if name in INTEGER else 0.0
        if not (low <= value <= MAXIMA[name] and value > 0):  # NaN fails too
            raise InvalidArgument.for_field(
                where, f"{name} {value:g} is out of range ({low:g} to {MAXIMA[name]:g})"
            )


def parameters(kind: ModelKind, params: Params | None = None) -> dict[str, float]:
    """The defaults of `kind` overridden by `params` (counts rounded)."""
    merged = {**DEFAULTS[kind], **(params or {})}
    return {k: float(round(v)) if k in INTEGER else float(v) for k, v in merged.items()}


def input_size(seasons: tuple[int, ...], horizon: int) -> int:
    """Values a window shows the network: two seasons, two horizons or the longest
    seasonality, within bounds (M4 Hourly: a week of hours, OWA 0.560 against 0.685 with four
    days, ADR 0043)."""
    return int(min(MAX_INPUT, max(2 * max(seasons[0], 1), 2 * horizon, max(seasons), MIN_INPUT)))


def min_length(seasons: tuple[int, ...], horizon: int) -> int:
    """Fewest values a series is fitted on: one window and the calibration tail."""
    h = max(horizon, 1)
    return input_size(seasons, horizon) + h + CALIBRATION_HORIZONS * h


class _Patched(nn.Module):
    """The window cut into about TOKENS patches (the first value repeated in front to fill)."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.patch = math.ceil(inputs / TOKENS)
        self.tokens = math.ceil(inputs / self.patch)
        self.pad = self.tokens * self.patch - inputs

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([x[:, :1].expand(-1, self.pad), x], dim=1)
        return padded.reshape(len(x), self.tokens, self.patch)


class LSTMNet(_Patched):
    """An LSTM over the window's patches, its last state to the horizon, plus a linear
    shortcut."""

    def __init__(self, inputs: int, outputs: int, hidden: int, layers: int) -> None:
        super().__init__(inputs)
        self.lstm = nn.LSTM(self.patch, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, outputs)
        self.skip = nn.Linear(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.patches(x))
        return self.head(out[:, -1]) + self.skip(x)  # type: ignore[no-any-return]


class TransformerNet(_Patched):
    """Patches of the window through a Transformer encoder to the horizon, plus a linear
    shortcut."""

    def __init__(self, inputs: int, outputs: int, hidden: int, layers: int) -> None:
        super().__init__(inputs)
        width = max(HEADS, hidden - hidden % HEADS)
        self.embed = nn.Linear(self.patch, width)
        self.position = nn.Parameter(torch.zeros(self.tokens, width))
        layer = nn.TransformerEncoderLayer(
            width, HEADS, dim_feedforward=2 * width, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(self.tokens * width, outputs)
        self.skip = nn.Linear(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.patches(x)) + self.position
        encoded = self.encoder(tokens)
        return self.head(encoded.flatten(1)) + self.skip(x)  # type: ignore[no-any-return]


def network(kind: ModelKind, config: Mapping[str, int]) -> nn.Module:
    """A fresh network of `kind` with `config`'s sizes."""
    cls = LSTMNet if kind is ModelKind.LSTM else TransformerNet
    return cls(config["inputs"], config["outputs"], config["hidden"], config["layers"])


@dataclass
class NeuralModel:
    """A fitted network: forecasts any series it was fitted on. Its weights are plain arrays
    (the network is rebuilt from its kind and sizes), the last window of each series kept."""

    kind: ModelKind
    config: dict[str, int]
    weights: dict[str, np.ndarray]
    tails: dict[str, np.ndarray]
    horizon: int
    """The longest horizon its intervals were calibrated for (0: none)."""
    scores: np.ndarray | None
    """Per step (columns), the sorted calibration errors (or their quantiles)."""
    calibration: int
    """How many calibration errors each step had."""
    series_ids: frozenset[str] = field(default_factory=frozenset)
    _net: nn.Module | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_net": None}

    def forecast(
        self,
        series_ids: Sequence[str],
        horizon: int,
        levels: Sequence[float],
        futures: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, Forecast]:
        """Forecasts from each series' kept window, recursively past the network's outputs
        (blocking, CPU). Refuses (InvalidArgument) intervals beyond the calibrated horizon.
        `futures` is the shared models' signature: the networks learn from the series alone
        (not in `USES_EXOGENOUS`), so no future values are ever asked of them."""
        del futures
        check_calibrated(self.kind, self.horizon, horizon, levels)
        windows = np.stack([self.tails[i] for i in series_ids])
        means, scales = _predict(self._network(), windows, horizon)
        found = {}
        for row, series_id in enumerate(series_ids):
            mean, scale = means[row], scales[row]
            intervals = {}
            for level in levels:
                width = self._quantile(level)[:horizon] * scale
                intervals[level] = (mean - width, mean + width)
            found[series_id] = Forecast(mean, intervals)
        return found

    def _quantile(self, level: float) -> np.ndarray:
        assert self.scores is not None
        m = self.calibration
        position = min(1.0, math.ceil((m + 1) * level / 100 - 1e-9) / m)
        return np.asarray(np.quantile(self.scores, position, axis=0), dtype=np.float64)

    def _network(self) -> nn.Module:
        if self._net is None:
            net = network(self.kind, self.config)
            net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.weights.items()})
            self._net = net.eval()
        return self._net


def fit_global(
    kind: ModelKind,
    series: Sequence[Prepared],
    horizon: int,
    lengths: Mapping[str, int] | None = None,
    intervals: bool = True,
    params: Params | None = None,
) -> NeuralModel:
    """A network of `kind` trained on every series of one group, each cut to `lengths` when
    given, with conformal intervals for `horizon` steps when asked and every series is long
    enough (blocking)."""
    if kind not in NEURAL:
        raise ValueError(f"{kind.value} is not a neural model")
    p = parameters(kind, params)
    h = max(horizon, 1)
    inputs = input_size(series[0].seasons, h)
    ys = {s.id: s.y[: lengths[s.id]] if lengths else s.y for s in series}
    config = {"inputs": inputs, "outputs": h, "hidden": int(p["hidden_size"])}
    config["layers"] = int(p["layers"])
    with _SEEDED, torch.random.fork_rng(devices=[]):  # one thread at a time: a global state
        torch.manual_seed(SEED)
        net = network(kind, config).to(device())
    trainer = _Trainer(net, p, inputs, h)
    tail = CALIBRATION_HORIZONS * h
    calibrate = intervals and min(len(y) for y in ys.values()) >= inputs + h + tail
    scores, count = None, 0
    if calibrate:
        trainer.train([y[:-tail] for y in ys.values()], int(p["epochs"]))
        scores, count = _calibration(net, list(ys.values()), inputs, h, tail)
        trainer.train(list(ys.values()), max(1, int(p["epochs"]) // 3))
    else:
        trainer.train(list(ys.values()), int(p["epochs"]))
    weights = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
    tails = {i: np.asarray(y[-inputs:], dtype=np.float32) for i, y in ys.items()}
    return NeuralModel(
        kind,
        config,
        weights,
        tails,
        h if calibrate else 0,
        scores,
        count,
        frozenset(ys),
    )


class _Trainer:
    """Adam on the L1 error of standardised windows, one seeded generator for the order."""

    def __init__(self, net: nn.Module, params: Mapping[str, float], inputs: int, h: int) -> None:
        self.net, self.inputs, self.h = net, inputs, h
        self.batch = int(params["batch_size"])
        self.budget = params["max_seconds"]
        self.began = time.monotonic()
        self.optimizer = torch.optim.Adam(net.parameters(), lr=params["learning_rate"])
        self.rng = np.random.default_rng(SEED)

    def train(self, ys: Sequence[np.ndarray], epochs: int) -> None:
        values, starts = _windows(ys, self.inputs + self.h)
        if not len(starts):
            return
        span = torch.arange(self.inputs + self.h)
        data = torch.from_numpy(values)
        on = next(self.net.parameters()).device
        loss_of = nn.L1Loss()
        self.net.train()
        for _ in range(epochs):
            order = self.rng.permutation(len(starts))[:WINDOWS_PER_EPOCH]
            for first in range(0, len(order), self.batch):
                chosen = torch.from_numpy(starts[order[first : first + self.batch]])
                rows = data[chosen[:, None] + span]
                x, y, _, _ = _standardise(rows, self.inputs)
                loss = loss_of(self.net(x.to(on)), y.to(on))
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
            if time.monotonic() - self.began > self.budget:
                break
        self.net.eval()


def _windows(ys: Sequence[np.ndarray], span: int) -> tuple[np.ndarray, np.ndarray]:
    """All series end to end, and the start of every whole window inside one series."""
    values = np.concatenate([np.asarray(y, dtype=np.float32) for y in ys])
    starts, offset = [], 0
    for y in ys:
        if len(y) >= span:
            starts.append(offset + np.arange(len(y) - span + 1))
        offset += len(y)
    found = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    return values, found.astype(np.int64)


def _standardise(
    rows: torch.Tensor, inputs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows (input, target) on their input's scale; the mean and scale used."""
    x = rows[:, :inputs]
    mean = x.mean(dim=1, keepdim=True)
    scale = x.std(dim=1, keepdim=True, unbiased=False)
    floor = 1e-2 * x.abs().mean(dim=1, keepdim=True) + 1e-8
    scale = torch.maximum(scale, floor)
    return (x - mean) / scale, (rows[:, inputs:] - mean) / scale, mean, scale


def _calibration(
    net: nn.Module, ys: Sequence[np.ndarray], inputs: int, h: int, tail: int
) -> tuple[np.ndarray, int]:
    """Per step, the sorted absolute errors (on the window's scale) at every origin of each
    series' held-out tail."""
    rows = []
    for y in ys:
        n = len(y)
        for origin in range(n - tail, n - h + 1):
            rows.append(y[origin - inputs : origin + h])
    batch = torch.from_numpy(np.asarray(rows, dtype=np.float32))
    x, target, _, _ = _standardise(batch, inputs)
    with torch.no_grad():
        out = net(x.to(next(net.parameters()).device)).cpu()
    errors = np.sort((out - target).abs().numpy().astype(np.float64), axis=0)
    count = len(errors)
    if count > MAX_SCORES:
        errors = np.quantile(errors, np.linspace(0, 1, MAX_SCORES), axis=0)
    return errors, count


def _predict(net: nn.Module, windows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of `horizon` steps (recursive past the network's outputs) and each window's
    scale."""
    history = torch.from_numpy(np.asarray(windows, dtype=np.float32))
    inputs = history.shape[1]
    found: list[torch.Tensor] = []
    scale0 = None
    with torch.no_grad():
        while sum(len(f[0]) for f in found) < horizon:
            x, _, mean, scale = _standardise(history[:, -inputs:], inputs)
            scale0 = scale if scale0 is None else scale0
            step = net(x) * scale + mean
            found.append(step)
            history = torch.cat([history, step], dim=1)
    means = torch.cat(found, dim=1)[:, :horizon].numpy().astype(np.float64)
    assert scale0 is not None
    return means, scale0.numpy().astype(np.float64)
