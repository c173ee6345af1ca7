"""Candidate improvements of the default streaming detector on NAB, each on two halves (ADR 0048).

Every candidate is a principle one of NAB's leading detectors uses, with its published or a
round constant, never one fitted here. Each is scored with NAB's protocol (threshold optimised
per profile) on the two halves of `--split` (`bench/anomaly_nab.py`'s: each half scored on its
own) and on the whole 34 series. A candidate replaces the default only if it wins on both
halves; what wins on one only was fitted to that half's series.

- `ensemble`: the default (ADR 0023), noisy-OR of `tails` and `context`.
- `anomaly_likelihood`: Numenta's post-processing (nupic's `AnomalyLikelihood`, as NAB's
  `numenta` detector runs it) over the ensemble's likelihood: its moving average over 10 values
  judged against the normal fitted to those averages over the last 8,640 (re-fitted every 100,
  after 288 + 100 values; mean at least 0.03, variance at least 0.0003).
- `htm_pipeline`: HTM's shape: the context's raw novelty (the share of its contexts never seen,
  as HTM's raw score is the share of columns not predicted) through that anomaly likelihood,
  noisy-OR with `tails`.
- `conformal_context`: the context's likelihood replaced by its conformal p-value among its last
  2,000 likelihoods (a new event in a source that often has them counts less), noisy-OR with
  `tails`.
- `conformal_ensemble`: the ensemble's likelihood as its conformal p-value among its last 2,000
  (each source judged against its own long-run scores, distribution-free).
- `knn_cad`: a third, independent member in the noisy-OR: KNN-CAD's conformal nearest neighbours
  (Burnaev and Ishimtsev 2016, NAB's `knncad`: embeddings of the last 19 values, the mean
  distance to the 27 nearest among the last 1,000 that do not overlap, its p-value among the
  last 1,000 such distances).
- `differences`: a third member in the noisy-OR that sees the series' innovations: `tails` over
  the first differences (a jump within the range, an ARIMA(0, 1, 0) residual).
- `spatial`: Numenta's spatial rule beside the ensemble: a value more than 5% of the range seen
  beyond it scores 1.
- `warm_up_600`, `tails_warm_up_600`: the learning period as long as NAB's probationary period
  on its 4,032-row series (15%: about 600 values), for both members or `tails` only.
- `tails_window_1000`, `tails_window_4000`: `tails`' memory half a week or two weeks at
  five-minute steps instead of one.
- `resonance` (ADR 0051): a third member in the noisy-OR that sees the shape of the last values:
  the `resonance` kind (fuzzy adaptive resonance over the last 8 values, vigilance 0.95, as
  the kind `ensemble_resonance` runs it); `resonance_window_4`, `resonance_window_16`,
  `resonance_vigilance_0.9`, `resonance_vigilance_0.98`: the same with one parameter moved.
- `predictor`: a third member that predicts each value from the 12 before it (an hour at
  five-minute steps): an autoregression learnt online by recursive least squares (forgetting
  factor 0.999, values scaled by the range seen), its absolute error's upper tail probability
  among the last 2,000 errors (the share at least as large, an exponential fit beyond the 2%
  largest), 0 in the first 150 values.
- `own_rate` (ADR 0055): a per-source threshold from the source's own events: the ensemble's
  likelihood with its complement (how normal the value is) multiplied by 1 + the events the
  source had in its last 2,000 values (`tails`' window). An event starts at a likelihood of at
  least 0.999 (`tails`' "1 in 1,000") more than 20 values (the default suppression) after the
  last such likelihood. A source that keeps producing rare values needs rarer ones to be flagged;
  `own_rate_1e-4` counts likelihoods of at least 0.9999 (the ensemble's default threshold),
  `own_rate_forever` every event since the start.

Usage: python -m bench.anomaly_nab_candidates [--split alternate|family] [--workers 2]
Prints the table; writes bench/results/anomaly_nab_candidates.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from scipy.special import erfc

from bench.anomaly_nab import DATA, RESULTS, SPLITS, _split_scores
from nexus.anomaly.detectors._types import Params
from nexus.anomaly.detectors.online import DEFAULT_SUPPRESS, KINDS
from nexus.anomaly.detectors.online._jit import compiled
from nexus.anomaly.evaluation import PROFILES, LabelledSeries, ScoredCorpus, load_corpus

RUNS: dict[str, tuple[str, Params]] = {  # what each candidate needs run over the corpus
    "ensemble": ("ensemble", {}),
    "tails": ("tails", {}),
    "context": ("context", {}),
    "warm_up_600": ("ensemble", {"tails.learning": 600, "context.learning": 600}),
    "tails_warm_up_600": ("ensemble", {"tails.learning": 600}),
    "tails_window_1000": ("ensemble", {"tails.window": 1000}),
    "tails_window_4000": ("ensemble", {"tails.window": 4000}),
    "resonance": ("resonance", {}),
    "resonance_window_4": ("resonance", {"window": 4}),
    "resonance_window_16": ("resonance", {"window": 16}),
    "resonance_vigilance_0.9": ("resonance", {"vigilance": 0.9}),
    "resonance_vigilance_0.98": ("resonance", {"vigilance": 0.98}),
}
Runs = dict[str, list[np.ndarray]]


def main() -> int:
    """Runs the detectors once, scores every candidate, prints and writes the table."""
    args = _arguments()
    corpus = load_corpus(DATA)
    with ProcessPoolExecutor(args.workers) as pool:
        runs = {name: _run(kind, params, corpus, pool) for name, (kind, params) in RUNS.items()}
        runs["knn"] = list(pool.map(_knn_cad, [s.values for s in corpus]))
        runs["differences"] = list(pool.map(_tails_of_differences, [s.values for s in corpus]))
        runs["predictor"] = list(pool.map(_predictor, [s.values for s in corpus]))
    whole = ScoredCorpus(corpus)
    rows = []
    for name, candidate in CANDIDATES.items():
        likelihoods = candidate(runs, corpus)
        rows.append(
            {
                "candidate": name,
                "halves": _split_scores(args.split, corpus, likelihoods),
                "whole": [whole.score(likelihoods, p).score for p in PROFILES],
                "false_positives": whole.score(likelihoods, PROFILES[0]).false_positives,
            }
        )
    _print(args.split, rows)
    output = RESULTS / "anomaly_nab_candidates.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"split": args.split, "candidates": rows}, indent=2))
    print(f"\nwrote {output}")
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--split", choices=sorted(SPLITS), default="alternate")
    parser.add_argument("--workers", type=int, default=2, help="processes running series")
    return parser.parse_args()


def _likelihoods(kind: str, params: Params, values: np.ndarray) -> np.ndarray:
    return KINDS[kind](params).update_many(np.asarray(values, dtype=np.float64))


def _run(
    kind: str, params: Params, corpus: list[LabelledSeries], pool: ProcessPoolExecutor
) -> list[np.ndarray]:
    n = len(corpus)
    return list(pool.map(_likelihoods, [kind] * n, [params] * n, [s.values for s in corpus]))


def anomaly_likelihood(raw: np.ndarray) -> np.ndarray:
    """Numenta's anomaly likelihood of raw scores (nupic's constants; 0.5 while learning)."""
    averaging, learning, estimation, history, every = 10, 288, 100, 8640, 100
    sums = np.concatenate(([0.0], np.cumsum(raw)))
    starts = np.maximum(np.arange(len(raw)) - averaging + 1, 0)
    average = (sums[1:] - sums[starts]) / (np.arange(len(raw)) + 1 - starts)
    out = np.full(len(raw), 0.5)
    mean = deviation = 0.0
    for t in range(learning + estimation, len(raw)):
        if (t - learning - estimation) % every == 0:
            fitted = average[max(learning, t - history) : t]
            mean = max(float(fitted.mean()), 0.03)
            deviation = math.sqrt(max(float(fitted.var()), 0.0003))
        x = average[t] if average[t] >= mean else 2 * mean - average[t]
        out[t] = 1.0 - 0.5 * float(erfc((x - mean) / deviation / math.sqrt(2.0)))
    return out


def conformal(scores: np.ndarray, memory: int = 2000, learning: int = 150) -> np.ndarray:
    """Each score's conformal p-value among the last `memory` before it (1 while learning)."""
    out = np.ones(len(scores))
    ordered: list[float] = []
    for t, x in enumerate(scores.tolist()):
        if len(ordered) >= learning:
            out[t] = (len(ordered) - bisect.bisect_left(ordered, x) + 1) / (len(ordered) + 1)
        bisect.insort(ordered, x)
        if t >= memory:
            del ordered[bisect.bisect_left(ordered, scores[t - memory])]
    return out


def _tails_of_differences(values: np.ndarray) -> np.ndarray:
    differences = np.diff(np.asarray(values, dtype=np.float64), prepend=float(values[0]))
    return _likelihoods("tails", {}, differences)


def _knn_cad(values: np.ndarray) -> np.ndarray:
    return _knn_loop(np.asarray(values, dtype=np.float64), 19, 1000, 27, 1000, 150)


@compiled
def _knn_loop(
    x: np.ndarray, dim: int, reference: int, k: int, calibration: int, learning: int
) -> np.ndarray:  # pragma: no cover - compiled
    out = np.zeros(len(x))
    kept = np.zeros((reference, dim))
    held = head = 0
    past = np.zeros(calibration)
    scored = at = 0
    distances = np.zeros(reference)
    for t in range(dim - 1, len(x)):
        if held >= k:
            for j in range(held):
                distances[j] = np.sqrt(np.sum((kept[j] - x[t - dim + 1 : t + 1]) ** 2))
            score = np.sort(distances[:held])[:k].mean()
            if scored >= learning:
                out[t] = 1.0 - (np.sum(past[:scored] >= score) + 1.0) / (scored + 1.0)
            past[at] = score
            at = (at + 1) % calibration
            scored = min(scored + 1, calibration)
        if t - dim >= dim - 1:  # the embedding that ended `dim` values ago no longer overlaps
            kept[head] = x[t - 2 * dim + 1 : t - dim + 1]
            head = (head + 1) % reference
            held = min(held + 1, reference)
    return out


def _predictor(values: np.ndarray) -> np.ndarray:
    return _predictor_loop(np.asarray(values, dtype=np.float64), 12, 0.999, 150, 2000)


@compiled
def _predictor_loop(
    x: np.ndarray, order: int, forgetting: float, learning: int, memory: int
) -> np.ndarray:  # pragma: no cover - compiled
    out = np.zeros(len(x))
    weights = np.zeros(order + 1)
    inverse = np.eye(order + 1) * 1000.0  # recursive least squares: the inverse covariance
    errors = np.zeros(memory)
    held = head = 0
    low, high = np.inf, -np.inf
    inputs = np.empty(order + 1)
    for t in range(len(x)):
        low, high = min(low, x[t]), max(high, x[t])
        if t < order:
            continue
        span = max(high - low, 1e-12)
        inputs[0] = 1.0
        for j in range(order):
            inputs[j + 1] = (x[t - 1 - j] - low) / span
        target = (x[t] - low) / span
        predicted = np.dot(weights, inputs)
        error = abs(target - predicted)
        if t >= learning and held >= 100:
            out[t] = 1.0 - _upper_tail(np.sort(errors[:held]), error)
        errors[head] = error
        head, held = (head + 1) % memory, min(held + 1, memory)
        gain = inverse @ inputs
        gain = gain / (forgetting + inputs @ gain)
        weights = weights + gain * (target - predicted)
        inverse = (inverse - np.outer(gain, inputs @ inverse)) / forgetting
    return out


@compiled
def _upper_tail(s: np.ndarray, x: float) -> float:  # pragma: no cover - compiled
    n = len(s)
    k = max(10, int(0.02 * n))
    at_least = (n - np.searchsorted(s, x)) / n
    if x <= s[n - k]:
        return at_least
    scale = max(s[n - k :].mean() - s[n - k], 1e-12 + 1e-3 * (s[n - 1] - s[0]))
    return min(1.0, max((k / n) * math.exp(-(x - s[n - k]) / scale), at_least))


def own_rate(
    likelihood: np.ndarray,
    level: float = 1e-3,
    memory: int | None = 2000,
    gap: int = DEFAULT_SUPPRESS,
) -> np.ndarray:
    """`likelihood` with each value's complement multiplied by 1 + the events before it in the
    last `memory` values (None: all of them), at least 0; see the module docstring."""
    out = np.empty(len(likelihood))
    events: list[int] = []
    last = -gap - 1
    for t, x in enumerate(likelihood.tolist()):
        while memory is not None and events and events[0] <= t - memory:
            events.pop(0)
        out[t] = max(0.0, 1.0 - (1.0 - x) * (1 + len(events)))
        if 1.0 - x <= level:
            if t - last >= gap:
                events.append(t)
            last = t
    return out


def _noisy_or(*parts: np.ndarray) -> np.ndarray:
    normal = np.ones_like(parts[0])
    for part in parts:
        normal = normal * (1.0 - part)
    return 1.0 - normal


def _spatial(values: np.ndarray, tolerance: float = 0.05, learning: int = 150) -> np.ndarray:
    low = np.minimum.accumulate(values)
    high = np.maximum.accumulate(values)
    low, high = np.concatenate(([np.inf], low[:-1])), np.concatenate(([-np.inf], high[:-1]))
    span = high - low
    beyond = (values > high + tolerance * span) | (values < low - tolerance * span)
    return (beyond & (np.arange(len(values)) >= learning) & (span > 0)).astype(float)


Candidate = Callable[[Runs, list[LabelledSeries]], list[np.ndarray]]


def _as_run(name: str) -> Candidate:
    """The candidate that is one of `RUNS` as it came out (other parameters of a kind)."""
    return lambda runs, corpus: runs[name]


def _third(name: str) -> Candidate:
    """The candidate that is the run `name` as a third member of the default's noisy-OR."""
    return lambda runs, corpus: [
        _noisy_or(e, m) for e, m in zip(runs["ensemble"], runs[name], strict=True)
    ]


CANDIDATES: dict[str, Candidate] = {
    "ensemble": lambda r, c: r["ensemble"],
    "anomaly_likelihood": lambda r, c: [anomaly_likelihood(e) for e in r["ensemble"]],
    "htm_pipeline": lambda r, c: [
        _noisy_or(t, anomaly_likelihood(x)) for t, x in zip(r["tails"], r["context"], strict=True)
    ],
    "conformal_context": lambda r, c: [
        1.0 - (1.0 - t) * conformal(x) for t, x in zip(r["tails"], r["context"], strict=True)
    ],
    "conformal_ensemble": lambda r, c: [1.0 - conformal(e) for e in r["ensemble"]],
    "knn_cad": _third("knn"),
    "differences": _third("differences"),
    "spatial": lambda r, c: [
        np.maximum(e, _spatial(s.values)) for e, s in zip(r["ensemble"], c, strict=True)
    ],
    **{name: _as_run(name) for name in list(RUNS)[3:] if not name.startswith("resonance")},
    **{name: _third(name) for name in RUNS if name.startswith("resonance")},
    "predictor": _third("predictor"),
    "own_rate": lambda r, c: [own_rate(e) for e in r["ensemble"]],
    "own_rate_1e-4": lambda r, c: [own_rate(e, level=1e-4) for e in r["ensemble"]],
    "own_rate_forever": lambda r, c: [own_rate(e, memory=None) for e in r["ensemble"]],
}


def _print(split: str, rows: list[dict[str, Any]]) -> None:
    print(f"split by {split}; standard / low FP / low FN, NAB's protocol; FPs on the whole")
    print(f"{'candidate':26} {'first half':>23} {'second half':>23} {'whole':>23} {'FPs':>5}")
    for row in rows:
        first, second = (_figures(h["scores"]) for h in row["halves"])
        print(
            f"{row['candidate']:26} {first} {second} {_figures(row['whole'])}"
            f" {row['false_positives']:5d}"
        )


def _figures(scores: list[float]) -> str:
    return f"{scores[0]:7.1f} {scores[1]:7.1f} {scores[2]:7.1f}"


if __name__ == "__main__":
    sys.exit(main())
