"""Streaming detectors on the Numenta Anomaly Benchmark (NAB), scored with NAB's own method.

Every streaming detector kind sees each series once, value by value, as a source's detector does
in the service. Two figures per kind and profile (standard, reward_low_FP_rate,
reward_low_FN_rate; 0 = detect nothing, 100 = perfect):
- "likelihood": the per-row likelihood, threshold optimised per profile over all series
  (NAB's protocol, what the published detectors' figures are);
- "flags": the flags a source emits (threshold, then suppression of repeated flags), threshold
  optimised per profile over a grid, and at the default threshold (what a user gets untuned).
The scorer is checked first: NAB's windowed Gaussian, rescored on the same series, must give its
published figures (its per-row outputs rounded to 12 digits, as NAB's result files store them).

`--split` also scores each kind's likelihoods on two disjoint halves of the corpus, each half
scored on its own (its own threshold, normalised by its own null and perfect detectors), beside
the whole: `alternate` (the series in name order, even places / odd places) or `family`
(AWS CloudWatch / the artificial and ad-exchange series). A change to a detector is chosen on one
half and must also win on the other (ADR 0048): what wins on one half only was fitted to its
series.

Usage: python bench/anomaly_nab.py [--kinds windowed_gaussian,...] [--workers 2] [--data DIR]
                                   [--split alternate|family]
Writes bench/results/anomaly_nab.json. Data: shared/data/anomaly/nab/ in a folder above the
repository; --data scores any corpus in NAB's layout (your own labelled series too): the 34 NAB
series (recognised by their labels) wherever they lie, with the scorer check and the published
figures, and any other corpus into bench/results/anomaly_nab_<its folder>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from nexus.anomaly.detectors.online import (
    DEFAULT_KIND,
    DEFAULT_SUPPRESS,
    DEFAULT_THRESHOLD,
    KINDS,
    WindowedGaussian,
)
from nexus.anomaly.evaluation import (
    PROFILES,
    LabelledSeries,
    ScoredCorpus,
    load_corpus,
    suppressed_flags,
)

_CORPUS = Path("shared/data/anomaly/nab")
DATA = next(
    (p / _CORPUS for p in Path(__file__).resolve().parents if (p / _CORPUS).is_dir()),
    Path(__file__).resolve().parents[1].parent / _CORPUS,
)
"""The corpus: `shared/data/anomaly/nab` in the nearest folder above this one that has it (a
worktree's checkout lies deeper than the main one)."""
RESULTS = Path(__file__).resolve().parent / "results"
"""Where results are written, whatever corpus was scored (never beside the data)."""
REFERENCE_LABELS_SHA256 = "4c055a1845b3d46ab6ee77e5ab26433f7ccd75090ae310f54731c522b10fb656"
"""The labels of the 34 NAB series the published figures are for: a corpus with these labels is
that part, wherever it lies."""
PUBLISHED = {  # this part (34 series), from the data's README: standard / low FP / low FN
    "Numenta HTM": (73.6, 68.4, 77.0),
    "CAD OSE": (71.7, 68.1, 75.1),
    "ARTime": (71.1, 62.4, 76.0),
    "htmjava": (70.2, 65.6, 73.5),
    "numentaTM": (68.7, 62.3, 72.5),
    "KNN CAD": (61.0, 51.1, 66.0),
    "Random Cut Forest": (56.7, 47.6, 63.1),
    "Earthgecko Skyline": (55.6, 46.2, 60.4),
    "Relative Entropy": (46.3, 39.2, 50.2),
    "Twitter ADVec": (43.5, 30.6, 50.4),
    "Skyline": (38.6, 28.5, 43.0),
    "Windowed Gaussian": (35.0, 16.7, 43.3),
    "Bayes changepoint": (34.3, 14.7, 49.6),
    "EXPoSE": (13.6, 7.1, 21.2),
    "random": (13.2, 3.4, 21.8),
}
BEFORE = {"false_positives": 2590, "standard": -196.0, "no_anomaly_flags": 676}
"""The per-source detector before issue 9 (EWMA z-score, |z| > 4), measured on this part."""
CHECK_TOLERANCE = 0.05
THRESHOLDS = sorted(
    {*np.linspace(0.5, 0.99, 50).round(4), *(1 - 10.0 ** -np.arange(2, 8.01, 0.25))}
)
NO_ANOMALY = "artificialNoAnomaly/"
SPLITS = {
    "alternate": lambda index, name: index % 2 == 0,
    "family": lambda index, name: name.startswith("realAWSCloudwatch/"),
}
"""How `--split` halves a corpus: True puts a series (its place in name order, its name) in the
first half."""


def main() -> int:
    """Checks the scorer, runs every kind, prints the table, writes the JSON; 1 on failure."""
    args = _arguments()
    if not args.data.is_dir():
        print(f"NAB data not found at {args.data}; nothing to benchmark.", file=sys.stderr)
        return 1
    corpus = load_corpus(args.data)
    scored = ScoredCorpus(corpus)
    labels = args.data / "labels" / "combined_windows.json"
    reference = hashlib.sha256(labels.read_bytes()).hexdigest() == REFERENCE_LABELS_SHA256
    with ProcessPoolExecutor(args.workers) as pool:
        check = _check_scorer(corpus, scored, pool) if reference else None
        results = [_bench_kind(kind, corpus, scored, pool, args.split) for kind in args.kinds]
    _print(check, results, published=reference)
    if args.split:
        _print_split(args.split, results)
    name = "anomaly_nab" if reference else f"anomaly_nab_{args.data.resolve().name}"
    output = RESULTS / f"{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"check": check, "kinds": results, "before": BEFORE}, indent=2))
    print(f"\nwrote {output}")
    return 0 if check is None or check["ok"] else 1


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--kinds", type=lambda t: [k for k in t.split(",") if k], default=sorted(KINDS)
    )
    parser.add_argument("--workers", type=int, default=2, help="processes running series")
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="a corpus in NAB's layout (data/, labels/combined_windows.json); other than the "
        "default, the published figures and the scorer check do not apply",
    )
    parser.add_argument(
        "--split",
        choices=sorted(SPLITS),
        help="also score each kind on two halves of the corpus, each on its own",
    )
    return parser.parse_args()


def _likelihoods(kind: str, series: LabelledSeries) -> tuple[np.ndarray, float]:
    """A fresh detector of `kind` over `series`: each row's likelihood, and seconds taken."""
    detector = KINDS[kind]()
    start = time.perf_counter()
    out = detector.update_many(np.asarray(series.values, dtype=np.float64))
    return out, time.perf_counter() - start


def _run(
    kind: str, corpus: list[LabelledSeries], pool: ProcessPoolExecutor
) -> tuple[list[np.ndarray], float]:
    runs = list(pool.map(_likelihoods, [kind] * len(corpus), corpus))
    return [r[0] for r in runs], sum(r[1] for r in runs)


def _check_scorer(
    corpus: list[LabelledSeries], scored: ScoredCorpus, pool: ProcessPoolExecutor
) -> dict[str, Any]:
    likelihoods, _ = _run(WindowedGaussian.KIND, corpus, pool)
    stored = [np.array([float(f"{x:.12g}") for x in part]) for part in likelihoods]
    got = [round(scored.score(stored, p).score, 1) for p in PROFILES]
    want = PUBLISHED["Windowed Gaussian"]
    ok = all(abs(g - w) <= CHECK_TOLERANCE for g, w in zip(got, want, strict=True))
    return {"detector": "Windowed Gaussian", "published": want, "rescored": got, "ok": ok}


def _halves(split: str, corpus: list[LabelledSeries]) -> tuple[list[int], list[int]]:
    """The places of the series in each half of `corpus` under `split`."""
    first = [SPLITS[split](index, s.name) for index, s in enumerate(corpus)]
    return (
        [i for i, inside in enumerate(first) if inside],
        [i for i, inside in enumerate(first) if not inside],
    )


def _split_scores(
    split: str, corpus: list[LabelledSeries], likelihoods: list[np.ndarray]
) -> list[dict[str, Any]]:
    """Each half's three profile scores (NAB's protocol, the half scored on its own)."""
    halves = []
    for places in _halves(split, corpus):
        part = ScoredCorpus([corpus[i] for i in places])
        scores = [part.score([likelihoods[i] for i in places], p) for p in PROFILES]
        halves.append(
            {
                "series": len(places),
                "windows": part.labelled_windows,
                "scores": [s.score for s in scores],
                "false_positives": scores[0].false_positives,
            }
        )
    return halves


def _bench_kind(
    kind: str,
    corpus: list[LabelledSeries],
    scored: ScoredCorpus,
    pool: ProcessPoolExecutor,
    split: str | None = None,
) -> dict[str, Any]:
    likelihoods, seconds = _run(kind, corpus, pool)
    rows = sum(len(s.values) for s in corpus)
    result: dict[str, Any] = {
        "kind": kind,
        "default": kind == DEFAULT_KIND,
        "microseconds_per_value": 1e6 * seconds / rows,
        "likelihood": {p.name: asdict(scored.score(likelihoods, p)) for p in PROFILES},
        "flags_best": {},
    }
    for profile in PROFILES:
        best = max(
            (
                scored.score_flags(
                    [suppressed_flags(lk, t, DEFAULT_SUPPRESS) for lk in likelihoods], profile, t
                )
                for t in THRESHOLDS
            ),
            key=lambda r: r.score,
        )
        result["flags_best"][profile.name] = asdict(best)
    threshold = KINDS[kind].DEFAULT_THRESHOLD
    flags = [suppressed_flags(lk, threshold, DEFAULT_SUPPRESS) for lk in likelihoods]
    result["default_threshold"] = threshold
    result["flags_default"] = {
        p.name: asdict(scored.score_flags(flags, p, threshold)) for p in PROFILES
    }
    result["no_anomaly_flags"] = {
        s.name: int(f.sum())
        for s, f in zip(corpus, flags, strict=True)
        if s.name.startswith(NO_ANOMALY)
    }
    if split:
        result["split"] = {"by": split, "halves": _split_scores(split, corpus, likelihoods)}
    return result


def _print(check: dict[str, Any] | None, results: list[dict[str, Any]], *, published: bool) -> None:
    if check is not None:
        status = "OK" if check["ok"] else "FAILED"
        print(f"scorer check ({check['detector']}): rescored {check['rescored']}", end=" ")
        print(f"vs published {check['published']}: {status}\n")
    print(
        f"{'detector (this part of NAB)':44} {'standard':>9} {'low FP':>7} {'low FN':>7} {'FPs':>6}"
    )
    for result in results:
        name = result["kind"] + (" (default)" if result["default"] else "")
        for label in ("likelihood", "flags_best", "flags_default"):
            figures = [result[label][p.name]["score"] for p in PROFILES]
            fps = result[label]["standard"]["false_positives"]
            print(f"  {name + ': ' + label:42} {_figures(figures)} {fps:6d}")
    if published:
        for name, scores in PUBLISHED.items():
            print(f"  {name + ' (published)':42} {_figures(scores)}")
        before = f"{BEFORE['standard']:9.1f} {'':7} {'':7} {BEFORE['false_positives']:6d}"
        print(f"  {'before (EWMA |z| > 4)':42} {before}")
    for result in results:
        if result["default"]:
            print(f"\ndefault detector ({result['kind']}), flags on the no-anomaly series", end=" ")
            print(f"at threshold {DEFAULT_THRESHOLD}:")
            for name, count in result["no_anomaly_flags"].items():
                print(f"  {name:55} {count}")
    for result in results:
        print(f"{result['kind']}: {result['microseconds_per_value']:.1f} us per value")


def _print_split(split: str, results: list[dict[str, Any]]) -> None:
    print(f"\nsplit by {split}: each half scored on its own (NAB's protocol), then the whole")
    print(f"{'detector':24} {'first half':>25} {'second half':>25} {'whole':>25}")
    for result in results:
        first, second = result["split"]["halves"]
        whole = [result["likelihood"][p.name]["score"] for p in PROFILES]
        print(
            f"  {result['kind']:22} {_short(first['scores'])} {_short(second['scores'])}"
            f" {_short(whole)}"
        )
    first, second = results[0]["split"]["halves"]
    for name, half in (("first", first), ("second", second)):
        print(f"  {name} half: {half['series']} series, {half['windows']} windows")


def _short(scores: list[float]) -> str:
    return f"{scores[0]:9.1f}{scores[1]:8.1f}{scores[2]:8.1f}"


def _figures(scores: tuple[float, ...] | list[float]) -> str:
    return f"{scores[0]:9.1f} {scores[1]:7.1f} {scores[2]:7.1f}"


if __name__ == "__main__":
    sys.exit(main())
