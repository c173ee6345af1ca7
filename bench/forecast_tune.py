"""Does a tuning search on the backtest pay on data it never saw? LightGBM on M4 Hourly.

The first --series series of M4 Hourly (horizon 48, seasons 24 and 168, as bench/forecast_m4.py).
The search is the service's own (`nexus.forecast.forecasting.tuning`: Optuna TPE, the defaults as
trial one, the ADR 0037 space), minimising the rolling-origin backtest MASE (--windows windows
of 48) on the training part only. Then LightGBM with the defaults and with the best parameters
is fitted on the whole training part and scored on the test part, which the search never saw
(the organisers' sMAPE / MASE, OWA against the published Naive2). Times are wall seconds.

Usage: python -m bench.forecast_tune [--series 50] [--trials 10] [--windows 1] [--seed 0]
Writes bench/results/forecast_tune.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.forecast_m4 import DATA, HORIZON, ROOT, _prepared, owa, read_series, score
from nexus.forecast.forecasting import ModelKind, Plan
from nexus.forecast.forecasting.learners import Params, fit_global, parameters
from nexus.forecast.forecasting.tuning import score as backtest_score
from nexus.forecast.forecasting.tuning import study, suggest

KIND = ModelKind.LIGHTGBM


def search(
    train: dict[str, np.ndarray], trials: int, windows: int, seed: int
) -> tuple[Params, list[float]]:
    """The best parameters by backtest MASE, and each trial's MASE."""
    prepared = [_prepared(s, y) for s, y in train.items()]
    plan, found = Plan(horizon=HORIZON, windows=windows), study(KIND, seed)
    tried: list[tuple[Params, float]] = []
    for _ in range(trials):
        trial = found.ask()
        params = suggest(trial, KIND)
        mase = backtest_score(KIND, prepared, plan, params).mase
        found.tell(trial, mase)
        tried.append((params, mase))
        print(f"  trial {len(tried)}: backtest MASE {mase:.3f} {params}", flush=True)
    best = min(tried, key=lambda t: t[1])[0]
    return best, [m for _, m in tried]


def held_out(
    train: dict[str, np.ndarray], test: dict[str, np.ndarray], params: Params
) -> tuple[float, float]:
    """sMAPE and MASE on the test part of LightGBM with `params`, fitted on the training part."""
    prepared = [_prepared(s, y) for s, y in train.items()]
    model = fit_global(KIND, prepared, HORIZON, intervals=False, params=params)
    forecasts = model.forecast(list(train), HORIZON, ())
    return score(train, test, {s: f.mean for s, f in forecasts.items()})


def main() -> None:
    args = _arguments()
    train = dict(list(read_series(args.data / "Hourly-train.csv").items())[: args.series])
    test = read_series(args.data / "Hourly-test.csv")
    began = time.perf_counter()
    best, trials = search(train, args.trials, args.windows, args.seed)
    seconds = time.perf_counter() - began
    rows = {}
    for name, params in (("defaults", parameters(KIND)), ("tuned", best)):
        s, m = held_out(train, test, params)
        rows[name] = {"params": dict(params), "smape": s, "mase": m, "owa": owa(s, m)}
        print(f"{name:9} test sMAPE {s:.3f} MASE {m:.3f} OWA {owa(s, m):.3f}  {dict(params)}")
    print(
        f"search: {args.trials} trials in {seconds:.1f} s; backtest MASE {trials[0]:.3f} -> "
        f"{min(trials):.3f}"
    )
    out = ROOT / "bench" / "results" / "forecast_tune.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {**vars(args), "data": str(args.data), "search_s": seconds, "backtest_mase": trials}
    out.write_text(json.dumps({**summary, "rows": rows}, indent=2))
    print(f"wrote {out}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=50, help="the first N series")
    parser.add_argument("--trials", type=int, default=10, help="trials of the search")
    parser.add_argument("--windows", type=int, default=1, help="backtest windows of 48")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--data", type=Path, default=DATA, help="the M4 folder")
    return parser.parse_args()


if __name__ == "__main__":
    main()
