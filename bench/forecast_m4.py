"""The forecast service's models on M4 Hourly, scored as the M4 organisers score them.

414 series, horizon 48, season 24. Per model: sMAPE and MASE averaged over series (the
organisers' definitions: sMAPE in percent with |y| + |f| below, MASE scaled by the in-sample
seasonal naive error at lag 24) and OWA, the mean of both relative to the published Naive2
(18.383 / 2.395). The scorer is checked first: seasonal naive must give the published
13.912 / 1.193. Each model goes through the service's own code (`nexus.forecast.forecasting`:
the series put on its grid, the model fitted, forecast). The statistical models are fitted per
series on --jobs worker processes; LightGBM and XGBoost are global (mlforecast): one model
fitted across all series, in the main process. "auto" is the per-series choice by a
rolling-origin backtest (the service's default candidates, or --candidates): the global
candidates backtested across series first, then the per-series candidates on the workers, then
the global winners fitted once (with conformal calibration, as the service does).
"statsforecast AutoARIMA" calls statsforecast directly in the same process, as the side-by-side
baseline; it costs about 75 s a series on one core here, so --arima-series N runs it on the
first N series only, and every model is then also scored on those N series beside it. Fit +
predict time is wall time. Prophet runs per series on the workers (on the bench's synthetic
hourly timestamps); the LSTM and the Transformer are global like LightGBM (torch with the
threads OMP_NUM_THREADS allows it).

With --service, the auto choice through the running service too: `nexus up`'s launcher starts
nats-server and the forecast service (--jobs executor threads) as processes; the series go in
as one Parquet dataset (UploadDataset), are fitted by StartFit (the operation, followed to its
end: backtests, fits, the registered version) and forecast by Predict from that version. Its
row ("auto (service)") times all three calls, over real gRPC, beside the in-process row.

Usage: python bench/forecast_m4.py [--models seasonal_naive,auto_theta,auto_ets,mstl,lightgbm,
       xgboost,prophet,lstm,transformer,auto,statsforecast_auto_arima] [--series N]
       [--arima-series N] [--jobs N] [--windows 2] [--candidates ...] [--data DIR] [--every N]
       [--service]
Writes bench/results/forecast_m4.json (or --out). Data: ../shared/data/forecasting/m4/ beside the
repository (Hourly-train.csv, Hourly-test.csv, m4_published_point_scores_by_frequency.csv).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pandas as pd

from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.api.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.operations.v1 import operations_pb2_grpc as ops_grpc
from nexus.common.auth import open_key_store
from nexus.common.launcher import Platform
from nexus.common.settings import NexusSettings
from nexus.forecast import converters
from nexus.forecast.forecasting import (
    GLOBAL,
    Errors,
    FittedSeries,
    ModelKind,
    Plan,
    Prepared,
    Series,
    SeriesOptions,
    applicable,
    choose_and_fit,
    fit_globals,
    forecast_once,
    global_backtests,
    mase,
    mase_scale,
    prepare,
    smape,
)
from nexus.forecast.forecasting.learners import fit_global

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
MODELS = [
    "seasonal_naive",
    "auto_theta",
    "auto_ets",
    "mstl",
    "lightgbm",
    "xgboost",
    "prophet",
    "lstm",
    "transformer",
    "auto",
    "statsforecast_auto_arima",
]
ARIMA = "statsforecast_auto_arima"


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


def _prepared(series_id: str, y: np.ndarray) -> Prepared:
    options = SeriesOptions(season_length=SEASON, extra_seasonalities=SEASONS[1:])
    return prepare(_series(series_id, y), options, 0)


Work = tuple[str, str, np.ndarray, int, tuple[ModelKind, ...], dict[ModelKind, Errors]]
"""Model, series id, values, backtest windows, candidates, the global candidates' errors."""


Done = tuple[str, np.ndarray | None, str, FittedSeries | None]
"""Series id, forecast, the model, the fitted series when it needs a global model."""


def forecast_service(work: Work) -> tuple[np.ndarray | None, str, FittedSeries | None]:
    """The service's path for one series: prepare, then one model, or the backtest choice
    (blocking). A winner that needs a global model (itself, or an ensemble's member) is
    forecast later, in the main process (no forecast here: the fitted series instead)."""
    model, series_id, y, windows, kinds, known = work
    prepared = _prepared(series_id, y)
    if model != "auto":
        kind = ModelKind(model)
        dates = prepared.grid(len(prepared.y) + HORIZON)  # Prophet's
        found = forecast_once(kind, prepared.seasons, prepared.y, HORIZON, (), dates=dates).mean
        return found, kind.value, None
    plan = Plan(horizon=HORIZON, windows=windows)
    choice, fitted = choose_and_fit(prepared, kinds, plan, known)
    if fitted.shared_keys():
        return None, choice.model.value, fitted
    _, forecast = fitted.forecast_with(HORIZON, (), {}, series_id, {})
    return forecast.mean, choice.model.value, None


def forecast_statsforecast_arima(y: np.ndarray) -> np.ndarray:
    """statsforecast's AutoARIMA called directly: the baseline."""
    from statsforecast.models import AutoARIMA

    return np.asarray(AutoARIMA(season_length=SEASON).forecast(y=y, h=HORIZON)["mean"])


def _one(work: Work) -> Done:
    model, series_id, y = work[:3]
    if model == ARIMA:
        return series_id, forecast_statsforecast_arima(y), "auto_arima", None
    return series_id, *forecast_service(work)


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


Ran = tuple[dict[str, np.ndarray], dict[str, int], float]
"""Forecasts by series, wins by model, wall seconds."""


def run(
    model: str,
    train: dict[str, np.ndarray],
    jobs: int,
    windows: int,
    kinds: tuple[ModelKind, ...],
) -> Ran:
    """Forecasts every series with `model`; wall seconds."""
    if model in {k.value for k in GLOBAL}:
        return run_global(ModelKind(model), train)
    if model == "auto":
        return run_auto(train, jobs, windows, kinds)
    began = time.perf_counter()
    done = _pool(jobs, [(model, s, y, windows, (), {}) for s, y in train.items()])
    return {s: m for s, m, _, _ in done if m is not None}, {model: len(done)}, _since(began)


def run_global(kind: ModelKind, train: dict[str, np.ndarray]) -> Ran:
    """One global model fitted across every series (point forecasts, no calibration)."""
    began = time.perf_counter()
    prepared = [_prepared(s, y) for s, y in train.items()]
    model = fit_global(kind, prepared, HORIZON, intervals=False)
    forecasts = model.forecast(list(train), HORIZON, ())
    return {s: f.mean for s, f in forecasts.items()}, {kind.value: len(train)}, _since(began)


def run_auto(
    train: dict[str, np.ndarray], jobs: int, windows: int, kinds: tuple[ModelKind, ...]
) -> Ran:
    """The service's choice: global backtests across series, per-series backtests and fits on
    the workers, then the global winners fitted once."""
    began = time.perf_counter()
    plan = Plan(horizon=HORIZON, windows=windows)
    prepared = [_prepared(s, y) for s, y in train.items()]
    ours = {p.id: applicable(p, kinds, plan) for p in prepared}
    known = global_backtests(prepared, ours, plan)
    done = _pool(
        jobs, [("auto", s, y, windows, ours[s], known.get(s, {})) for s, y in train.items()]
    )
    forecasts = {s: mean for s, mean, _, _ in done if mean is not None}
    forecasts.update(_global_winners(prepared, ours, [f for _, _, _, f in done if f]))
    wins: dict[str, int] = {}
    for _, _, chosen, _ in done:
        wins[chosen] = wins.get(chosen, 0) + 1
    return {s: forecasts[s] for s in train}, wins, _since(began)


def _global_winners(
    prepared: list[Prepared],
    kinds: dict[str, tuple[ModelKind, ...]],
    fitted: list[FittedSeries],
) -> dict[str, np.ndarray]:
    """The forecasts of the series whose model needs a global one: each fitted once."""
    models = fit_globals(prepared, kinds, set().union(*(f.shared_keys() for f in fitted)), HORIZON)
    return {f.series_id: f.forecast_with(HORIZON, (), {}, "", models)[1].mean for f in fitted}


def run_service(
    train: dict[str, np.ndarray], jobs: int, windows: int, kinds: tuple[ModelKind, ...]
) -> Ran:
    """The auto choice through the running service (see the module's doc)."""
    os.environ["NEXUS_FORECAST_WORKERS"] = str(jobs)
    with tempfile.TemporaryDirectory() as folder:
        platform = Platform(Path(folder), nats_port=0, gateway_port=0, services=["forecast"])
        try:
            return asyncio.run(_through(platform, train, windows, kinds))
        finally:
            platform.stop()


async def _through(
    platform: Platform,
    train: dict[str, np.ndarray],
    windows: int,
    kinds: tuple[ModelKind, ...],
) -> Ran:
    nats_url = await platform.start_nats()
    await platform.start_services()
    async with open_key_store(NexusSettings(nats_url=nats_url), "bench-keys") as keys:
        _, secret = await keys.create("bench", ["*"], rate_limit_per_minute=10_000_000)
    md = (("authorization", f"Bearer {secret}"),)
    big = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    (child,) = platform.children
    async with grpc.aio.insecure_channel(f"127.0.0.1:{child.port}", options=big) as channel:
        stub, operations = (
            pb_grpc.ForecastServiceStub(channel),
            ops_grpc.OperationsServiceStub(channel),
        )
        began = time.perf_counter()
        upload = pb.UploadDatasetRequest(
            name="m4-hourly", data=_parquet(train), format=pb.DATASET_FORMAT_PARQUET
        )
        dataset = (await stub.UploadDataset(upload, metadata=md)).dataset
        options = pb.SeriesOptions(season_length=SEASON, extra_seasonalities=SEASONS[1:])
        fit = pb.FitRequest(
            name="m4-hourly",
            data=pb.SeriesData(dataset_id=dataset.id, options=options),
            horizon=HORIZON,
            models=[converters.KINDS[k] for k in kinds],
            backtest=pb.BacktestConfig(windows=windows),
        )
        started = await stub.StartFit(pb.StartFitRequest(fit=fit), metadata=md)
        watched = operations.WatchOperation(
            ops_pb.WatchOperationRequest(name=started.operation.name), metadata=md
        )
        done = [reply.operation async for reply in watched][-1]
        if done.state != ops_pb.OPERATION_STATE_SUCCEEDED:
            sys.exit(f"the fit through the service failed: {done.error}")
        request = pb.PredictRequest(name="m4-hourly", version="1", series_ids=list(train))
        predicted = await stub.Predict(request, metadata=md)
        seconds = _since(began)
    forecasts = {f.series_id: np.array(f.mean) for f in predicted.forecasts}
    wins: dict[str, int] = {}
    for f in predicted.forecasts:
        name = converters.MODELS[f.model].value
        wins[name] = wins.get(name, 0) + 1
    return forecasts, wins, seconds


def _parquet(train: dict[str, np.ndarray]) -> bytes:
    """The series in the service's long format, as Parquet."""
    frame = pd.concat(
        pd.DataFrame({"unique_id": s, "ds": _series(s, y).timestamps, "y": y})
        for s, y in train.items()
    )
    out = io.BytesIO()
    frame.to_parquet(out, index=False)
    return out.getvalue()


def _pool(jobs: int, work: list[Work]) -> list[Done]:
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            return list(pool.map(_one, work, chunksize=max(1, len(work) // (jobs * 8))))
    return [_one(w) for w in work]


def _since(began: float) -> float:
    return time.perf_counter() - began


def main() -> None:
    args = _arguments()
    train, test = (
        read_series(args.data / "Hourly-train.csv"),
        read_series(args.data / "Hourly-test.csv"),
    )
    total = len(train)
    if args.series:
        train = dict(list(train.items())[: args.series])
    if args.every > 1:
        train = dict(list(train.items())[:: args.every])
    arima_ids = list(train)[: args.arima_series] if args.arima_series else list(train)
    kinds = tuple(ModelKind(k) for k in args.candidates.split(",") if k)
    check_scorer(train, test, args.series or int(args.every > 1))
    print(
        f"series: {_subset(len(train), total, args.every)}; {args.jobs} worker processes",
        flush=True,
    )
    rows, forecasts = [], {}
    for model in [m for m in args.models.split(",") if m]:
        ids = arima_ids if model == ARIMA else list(train)
        ran, wins, seconds = run(model, {s: train[s] for s in ids}, args.jobs, args.windows, kinds)
        forecasts[model] = ran
        rows.append(
            _row(model, train, test, ran, seconds, wins, _subset(len(ids), total, args.every))
        )
    if len(arima_ids) < len(train) and ARIMA in forecasts:
        print(f"\non the AutoARIMA subset ({_subset(len(arima_ids), total)}):")
        for model, ran in forecasts.items():
            _row(model, train, test, {s: ran[s] for s in arima_ids}, float("nan"), {}, "")
    if args.service:
        ran, wins, seconds = run_service(train, args.jobs, args.windows, kinds)
        rows.append(
            _row(
                "auto (service)",
                train,
                test,
                ran,
                seconds,
                wins,
                _subset(len(train), total, args.every),
            )
        )
    print_published(args.data)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "series": len(train),
        "arima_series": len(arima_ids),
        "jobs": args.jobs,
        "windows": args.windows,
        "candidates": args.candidates or "service default",
        "rows": rows,
    }
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--candidates", default="", help="the auto choice's candidates (default: the service's)"
    )
    parser.add_argument(
        "--series", "--limit", type=int, default=0, help="the first N series only (0: all 414)"
    )
    parser.add_argument(
        "--every", type=int, default=1, help="every Nth of those series only (quick looks)"
    )
    parser.add_argument(
        "--arima-series",
        type=int,
        default=0,
        help="AutoARIMA on the first N of those series only (0: all of them)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--windows", type=int, default=2, help="backtest windows of the auto choice"
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forecast_m4.json")
    parser.add_argument(
        "--service", action="store_true", help="the auto choice through the running service too"
    )
    return parser.parse_args()


def _subset(n: int, total: int, every: int = 1) -> str:
    if every > 1:
        return f"{n} of {total} (every {every}th)"
    return f"all {total}" if n == total else f"the first {n} of {total}"


def _row(
    model: str,
    train: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    forecasts: dict[str, np.ndarray],
    seconds: float,
    wins: dict[str, int],
    subset: str,
) -> dict[str, object]:
    s, m = score(train, test, forecasts)
    per_series = seconds / len(forecasts)
    figures = f"sMAPE {s:7.3f}  MASE {m:6.3f}  OWA {owa(s, m):6.3f}"
    timing = f"{seconds:8.1f} s ({per_series:6.3f} s/series)" if seconds == seconds else ""
    shown = f"  {wins}" if len(wins) > 1 else ""
    print(f"{model:26s} {figures}  {timing}  {subset}{shown}", flush=True)
    return {
        "model": model,
        "series": len(forecasts),
        "subset": subset,
        "smape": s,
        "mase": m,
        "owa": owa(s, m),
        "seconds": seconds,
        "wins": wins,
    }


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
