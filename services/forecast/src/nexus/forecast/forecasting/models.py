"""The models a series can get: statsforecast's, fitted per series and built for its seasons,
and mlforecast's global ones (LightGBM, XGBoost; `learners`), fitted across many series."""

from __future__ import annotations

from enum import Enum
from typing import Any

from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

from nexus.common.errors import InvalidArgument


class ModelKind(Enum):
    """A forecasting model; the value is its name in reports and the registry."""

    SEASONAL_NAIVE = "seasonal_naive"
    AUTO_THETA = "auto_theta"
    AUTO_ETS = "auto_ets"
    MSTL = "mstl"
    AUTO_ARIMA = "auto_arima"
    LIGHTGBM = "lightgbm"
    XGBOOST = "xgboost"
    PROPHET = "prophet"
    LSTM = "lstm"
    TRANSFORMER = "transformer"
    ENSEMBLE = "ensemble"


ENSEMBLE = ModelKind.ENSEMBLE
"""The mean of a series' best other candidates by backtest error (`ensembles`, ADR 0044)."""


NEURAL = frozenset({ModelKind.LSTM, ModelKind.TRANSFORMER})
"""Neural networks (`neural`), global like the gradient-boosted ones (ADR 0043)."""
GLOBAL = frozenset({ModelKind.LIGHTGBM, ModelKind.XGBOOST}) | NEURAL
"""Models fitted on many series at once (`learners`); the others are fitted per series."""

DEFAULT_CANDIDATES = (
    ModelKind.SEASONAL_NAIVE,
    ModelKind.AUTO_THETA,
    ModelKind.AUTO_ETS,
    ModelKind.MSTL,
    ModelKind.LIGHTGBM,
    ModelKind.ENSEMBLE,
)
"""The automatic choice's candidates when none are named (LightGBM where the series is long
enough for its backtest, ADR 0033). AutoARIMA only when asked for: its order search costs 10-100
times the others (ADR 0031); XGBoost only when asked for: it learns what LightGBM does, slower.
Prophet, the LSTM and the Transformer only when asked for (ADR 0043): Prophet did worse than
seasonal naive on M4 Hourly; the networks did as well as LightGBM or better there, but each
backtest window costs a training (minutes of a core for a set of M4 Hourly's size). The ensemble
last: it combines the others (ADR 0044)."""

USES_EXOGENOUS = frozenset(
    {ModelKind.AUTO_ARIMA, ModelKind.PROPHET, ModelKind.LIGHTGBM, ModelKind.XGBOOST}
)
"""Models that use exogenous columns (Prophet as regressors, the global gradient-boosted ones
as dynamic features, ADR 0045); the others forecast from the series alone."""


def build(kind: ModelKind, seasons: tuple[int, ...]) -> Any:
    """A fresh statsforecast model of `kind` for a series with these seasons.

    Raises:
        ValueError: `kind` is a global model (see `learners.build`) or the ensemble.
    """
    if kind in GLOBAL or kind is ModelKind.PROPHET:
        raise ValueError(f"{kind.value} is not a statsforecast model (learners, prophet_model)")
    if kind is ENSEMBLE:
        raise ValueError("the ensemble combines fitted members (ensembles)")
    season = seasons[0]
    if kind is ModelKind.SEASONAL_NAIVE:
        return SeasonalNaive(season_length=season)
    if kind is ModelKind.AUTO_THETA:
        return AutoTheta(season_length=season)
    if kind is ModelKind.AUTO_ETS:
        return AutoETS(season_length=season)
    if kind is ModelKind.AUTO_ARIMA:
        return AutoARIMA(season_length=season)
    return MSTL(season_length=[s for s in seasons if s > 1])


def candidates(kinds: tuple[ModelKind, ...], seasons: tuple[int, ...]) -> tuple[ModelKind, ...]:
    """The candidates a series gets: those named (checked), else the defaults that apply.

    Raises:
        InvalidArgument: MSTL named for a series without a season; the ensemble named with
            fewer than two other candidates.
    """
    if not kinds:
        return tuple(k for k in DEFAULT_CANDIDATES if k is not ModelKind.MSTL or _seasonal(seasons))
    if ModelKind.MSTL in kinds and not _seasonal(seasons):
        raise InvalidArgument.for_field("models", "MSTL needs a season longer than 1 step")
    named = tuple(dict.fromkeys(kinds))
    if ENSEMBLE in named and len(named) < 3:
        raise InvalidArgument.for_field(
            "models", "the ensemble combines the best of at least two other candidates"
        )
    return named


def min_length(kind: ModelKind, seasons: tuple[int, ...]) -> int:
    """Fewest observations the model is fitted on: two full seasons for seasonal models (the
    ensemble: what its members need, checked with them)."""
    if kind is ENSEMBLE:
        return 1
    longest = max(seasons) if kind is ModelKind.MSTL else seasons[0]
    if kind is ModelKind.SEASONAL_NAIVE:
        return max(longest, 1) + 1
    return max(2 * longest, 8) if longest > 1 else 8


def _seasonal(seasons: tuple[int, ...]) -> bool:
    return any(s > 1 for s in seasons)
