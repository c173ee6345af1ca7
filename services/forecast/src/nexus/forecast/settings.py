"""Settings of the forecast service (env prefix `NEXUS_FORECAST_`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nexus.common.settings import ServiceSettings


class ForecastSettings(ServiceSettings):
    """The forecast service's limits and serving knobs."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_FORECAST_", extra="ignore")

    max_series: int = Field(default=10_000, gt=0)
    """Most series one fit (or one Predict call) may carry."""

    max_sync_series: int = Field(default=100, gt=0)
    """Most series a Forecast or Backtest call fits while the caller waits; more go through
    StartFit, an operation."""

    max_points_per_series: int = Field(default=100_000, gt=0)
    """Longest series, in timestamps (missing steps included)."""

    max_total_points: int = Field(default=5_000_000, gt=0)
    """Most points of all series of one request or dataset together."""

    max_exogenous: int = Field(default=20, ge=0)
    """Most exogenous columns."""

    max_horizon: int = Field(default=1_000, gt=0)
    """Longest horizon, in steps (it may not exceed the series' length either)."""

    max_missing_run: int = Field(default=12, ge=0)
    """Default longest run of missing values (NaN or missing steps) filled by linear
    interpolation; a longer run is refused. A request may ask for another."""

    max_dataset_bytes: int = Field(default=15 * 1024 * 1024, gt=0)
    """Largest file an UploadDataset call may carry (a gRPC message is at most
    max_message_bytes)."""

    max_report_series: int = Field(default=1_000, ge=0)
    """Most per-series choices a fit's result lists (the rest are counted)."""

    model_cache_size: int = Field(default=100, gt=0)
    """Most fitted sets (registry versions) kept loaded; the least recently used goes first."""

    model_cache_bytes: int = Field(default=2 * 1024 * 1024 * 1024, gt=0)
    """Most bytes of fitted sets kept loaded (by artifact size)."""

    series_cache_size: int = Field(default=10_000, gt=0)
    """Most series models of one fitted set kept unpacked; each is unpacked on first use."""

    max_chart_points: int = Field(default=20_000, gt=0)
    """Most history values one chart draws (a longer series: ask for its last `history`)."""

    neural_device: Literal["auto", "cpu"] = "auto"
    """Where the LSTM and Transformer train: "auto" on CUDA when torch sees a GPU, "cpu" always
    on the CPU (with torch's thread setting: the process's, e.g. OMP_NUM_THREADS)."""
