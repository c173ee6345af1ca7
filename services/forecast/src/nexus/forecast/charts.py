"""Charts of one series: history, forecast, prediction intervals and backtest windows, as PNG or
SVG (matplotlib's Agg and SVG canvases; no pyplot, so no global state and no display).

Plain Python, no gRPC: the engine hands over what to draw, this returns the image's bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nexus.forecast.forecasting import Forecast

DPI = 100
DEFAULT_WIDTH = 1000
DEFAULT_HEIGHT = 500
HISTORY_COLOUR = "#1f2937"
FORECAST_COLOUR = "#2563eb"
BACKTEST_COLOUR = "#ea580c"


class ChartFormat(Enum):
    """An image format and its media type."""

    PNG = "image/png"
    SVG = "image/svg+xml"

    @property
    def media_type(self) -> str:
        """The Content-Type of an image of this format."""
        return self.value


@dataclass(frozen=True)
class ChartSpec:
    """How a chart looks: format, size in pixels, title, how much history it shows."""

    format: ChartFormat = ChartFormat.PNG
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    title: str = ""
    history: int = 0
    """Only the last `history` values are drawn; 0: all."""


@dataclass(frozen=True)
class Line:
    """A forecast drawn over its timestamps."""

    index: pd.DatetimeIndex
    forecast: Forecast


@dataclass(frozen=True)
class Chart:
    """What one chart shows: the history, the forecast, the backtest windows' forecasts."""

    title: str
    history_index: pd.DatetimeIndex
    history: np.ndarray
    forecast: Line
    backtests: Sequence[Line] = ()


@dataclass(frozen=True)
class Image:
    """A rendered chart."""

    data: bytes
    media_type: str


def render(chart: Chart, spec: ChartSpec) -> Image:
    """Draws `chart` as `spec` says (blocking, CPU)."""
    figure = Figure(figsize=(spec.width / DPI, spec.height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    keep = slice(-spec.history, None) if spec.history else slice(None)
    axes.plot(
        chart.history_index[keep],
        chart.history[keep],
        color=HISTORY_COLOUR,
        lw=1.2,
        label="history",
    )
    for i, window in enumerate(chart.backtests):
        axes.plot(
            window.index,
            window.forecast.mean,
            color=BACKTEST_COLOUR,
            lw=1.0,
            ls="--",
            label="backtest" if i == 0 else None,
        )
        axes.axvline(window.index[0], color=BACKTEST_COLOUR, lw=0.5, alpha=0.4)
    _forecast(axes, chart.forecast)
    axes.set_title(spec.title or chart.title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    return Image(_save(figure, spec.format), spec.format.media_type)


def _forecast(axes: Axes, line: Line) -> None:
    forecast = line.forecast
    widest_first = sorted(forecast.intervals, reverse=True)
    for n, level in enumerate(widest_first):
        lower, upper = forecast.intervals[level]
        alpha = 0.15 + 0.2 * n / max(1, len(widest_first))
        axes.fill_between(
            line.index,
            lower,
            upper,
            color=FORECAST_COLOUR,
            alpha=alpha,
            lw=0,
            label=f"{level:g}% interval",
        )
    axes.plot(line.index, forecast.mean, color=FORECAST_COLOUR, lw=1.5, label="forecast")


def _save(figure: Figure, fmt: ChartFormat) -> bytes:
    out = io.BytesIO()
    # SVG: text stays text (searchable, smaller than glyph outlines) and no date in the
    # metadata, so the same chart gives the same bytes.
    metadata = {"Date": None} if fmt is ChartFormat.SVG else {}
    with rc_context({"svg.fonttype": "none"}):
        figure.savefig(out, format=fmt.name.lower(), metadata=metadata)
    return out.getvalue()
