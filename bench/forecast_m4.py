"""The forecast service's models on M4 Hourly, scored as the M4 organisers score them.

414 series, horizon 48, season 24. Per model: sMAPE and MASE averaged over series (the
organisers' definitions: sMAPE in percent with |y| + |f| below, MASE scaled by the in-sample
seasonal naive error at lag 24) and OWA, the mean of both relative to the published Naive2
(18.383 / 2.395). The scorer is checked first: seasonal naive must give the published
13.912 / 1.193. Each model goes through the service's own code (`nexus.forecast.forecasting`:
the series put on its grid, the model fitted, forecast); "auto" is the per-series choice by a
rolling-origin backtest (the service's default candidates, or --candidates); "statsforecast
AutoARIMA" calls statsforecast directly in the same process, as the side-by-side baseline. Fit
+ predict time is wall time over --jobs worker processes.

Usage: python bench/forecast_m4.py [--models seasonal_naive,auto_theta,auto_ets,mstl,auto,
       statsforecast_auto_arima] [--limit N] [--jobs N] [--windows 2] [--data DIR]
Writes bench/results/forecast_m4.json. Data: ../shared/data/forecasting/m4/ beside the
repository (Hourly-train.csv, Hourly-test.csv, m4_published_point_scores_by_frequency.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from nexus.forecast.forecasting import (
    ModelKind,
    Plan,
    Series,
    SeriesOptions,
    candidates,
    choose_and_fit,
    forecast_once,
    mase,
    mase_scale,
    prepare,
    smape,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("data", "forecasting", "m4")
DATA = next(
    (
        p
        for p in (ROOT.parent.joinpath("shared", *SHARED), Path("/work/shared").joinpath(*SHARED))
        if p.is_dir()
    ),
    ROOT.parent.joinpath("shared", *SHARED),
)  # a checkout beside shared/ (main), or a worktree of it
HORIZON, SEASON = 48, 24
SEASONS = (24, 168)  # MSTL: a day and a week of hours
PUBLISHED = {"sNaive": (13.912, 1.193), "Naive2": (18.383, 2.395), "winner (118)": (9.328, 0.893)}
MODELS = ["seasonal_naive", "auto_theta", "auto_ets", "mstl", "auto", "statsforecast_auto_arima"]


def read_series(path: Path) -> dict[str, np.ndarray]:
    """M4's wide CSV: an id, then the values (rows end with empty cells)."""
    out = {}
    with path.open() as f:
        rows = csv.reader(f)
        next(rows)
        for row in rows:
            out[row[0]] = np.array([float(v) for v in row[1:] if v != ""])
    return out


def published_owa(data: Path) -> dict[str, float]:
    """The published Hourly OWA of every method, by name."""
    with (data / "m4_published_point_scores_by_frequency.csv").open() as f:
        return {r["Method"]: float(r["OWA_Hourly"]) for r in csv.DictReader(f) if r["OWA_Hourly"]}


def _series(series_id: str, y: np.ndarray) -> Series:
    index = pd.date_range("2000-01-01", periods=len(y), freq="h")  # M4 gives no dates
    return Series(series_id, index, y)


def forecast_service(
    model: str, series_id: str, y: np.ndarray, windows: int, kinds: tuple[ModelKind, ...]
) -> tuple[np.ndarray, str]:
    """The service's path: prepare, then one model, or the backtest choice (blocking)."""
    options = SeriesOptions(season_length=SEASON, extra_seasonalities=SEASONS[1:])
    prepared = prepare(_series(series_id, y), options, 0)
    if model != "auto":
        kind = ModelKind(model)
        return forecast_once(kind, prepared.seasons, prepared.y, HORIZON, ()).mean, kind.value
    plan = Plan(horizon=HORIZON, windows=windows)
    choice, fitted = choose_and_fit(prepared, candidates(kinds, prepared.seasons), plan)
    _, forecast = fitted.forecast(HORIZON, (), {}, series_id)
    return forecast.mean, choice.model.value


def forecast_statsforecast_arima(y: np.ndarray) -> np.ndarray:
    """statsforecast's AutoARIMA called directly: the baseline."""
    from statsforecast.models import AutoARIMA

    return np.asarray(AutoARIMA(season_length=SEASON).forecast(y=y, h=HORIZON)["mean"])


def _one(
    args: tuple[str, str, np.ndarray, int, tuple[ModelKind, ...]],
) -> tuple[str, np.ndarray, str]:
    model, series_id, y, windows, kinds = args
    if model == "statsforecast_auto_arima":
        return series_id, forecast_statsforecast_arima(y), "auto_arima"
    mean, chosen = forecast_service(model, series_id, y, windows, kinds)
    return series_id, mean, chosen


def score(
    train: dict[str, np.ndarray], test: dict[str, np.ndarray], forecasts: dict[str, np.ndarray]
) -> tuple[float, float]:
    """sMAPE and MASE averaged over series, as the organisers compute them."""
    smapes = [smape(test[s], forecasts[s]) for s in forecasts]
    mases = [mase(test[s], forecasts[s], mase_scale(train[s], SEASON)) for s in forecasts]
    return float(np.mean(smapes)), float(np.mean(mases))


def owa(s: float, m: float) -> float:
    """The overall weighted average relative to the published Naive2."""
    naive2_smape, naive2_mase = PUBLISHED["Naive2"]
    return 0.5 * (s / naive2_smape + m / naive2_mase)


def run(
    model: str,
    train: dict[str, np.ndarray],
    jobs: int,
    windows: int,
    kinds: tuple[ModelKind, ...],
) -> tuple[dict[str, np.ndarray], dict[str, int], float]:
    """Forecasts every series with `model` on `jobs` processes; wall seconds."""
    work = [(model, s, y, windows, kinds) for s, y in train.items()]
    began = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            done = list(pool.map(_one, work, chunksize=max(1, len(work) // (jobs * 8))))
    else:
        done = [_one(w) for w in work]
    seconds = time.perf_counter() - began
    wins: dict[str, int] = {}
    for _, _, chosen in done:
        wins[chosen] = wins.get(chosen, 0) + 1
    return {s: mean for s, mean, _ in done}, wins, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--candidates", default="", help="the auto choice's candidates (default: the service's)"
    )
    parser.add_argument("--limit", type=int, default=0, help="the first N series only (0: all 414)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--windows", type=int, default=2, help="backtest windows of the auto choice"
    )
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    train, test = (
        read_series(args.data / "Hourly-train.csv"),
        read_series(args.data / "Hourly-test.csv"),
    )
    if args.limit:
        train = dict(list(train.items())[: args.limit])
    kinds = tuple(ModelKind(k) for k in args.candidates.split(",") if k)
    check_scorer(train, test, args.limit)
    rows = []
    for model in [m for m in args.models.split(",") if m]:
        forecasts, wins, seconds = run(model, train, args.jobs, args.windows, kinds)
        s, m = score(train, test, forecasts)
        rows.append(
            {
                "model": model,
                "smape": s,
                "mase": m,
                "owa": owa(s, m),
                "seconds": seconds,
                "wins": wins,
            }
        )
        figures = f"sMAPE {s:7.3f}  MASE {m:6.3f}  OWA {owa(s, m):6.3f}"
        print(f"{model:26s} {figures}  {seconds:8.1f} s  {wins}", flush=True)
    print_published(args.data)
    out = ROOT / "bench" / "results" / "forecast_m4.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"series": len(train), "jobs": args.jobs, "rows": rows}, indent=2))
    print(f"wrote {out}")


def check_scorer(train: dict[str, np.ndarray], test: dict[str, np.ndarray], limit: int) -> None:
    """Seasonal naive (the last 24 values, repeated) must reproduce the published figures."""
    forecasts = {s: np.tile(y[-SEASON:], HORIZON // SEASON) for s, y in train.items()}
    s, m = score(train, test, forecasts)
    print(f"{'scorer check: sNaive':26s} sMAPE {s:7.3f}  MASE {m:6.3f}  (published 13.912 / 1.193)")
    if not limit and (round(s, 3), round(m, 3)) != PUBLISHED["sNaive"]:
        sys.exit("the scorer does not reproduce the published seasonal naive figures")


def print_published(data: Path) -> None:
    """The published figures the table is read against."""
    table = published_owa(data)
    for name, (s, m) in PUBLISHED.items():
        print(f"published {name:16s} sMAPE {s:7.3f}  MASE {m:6.3f}  OWA {owa(s, m):6.3f}")
    print(f"published OWA: sNaive {table['sNaive']:.3f}, winner (118) {table['118']:.3f}")


if __name__ == "__main__":
    main()
