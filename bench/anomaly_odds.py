"""Anomaly detector accuracy on the ODDS benchmark sets, beside PyOD's published ROC-AUC.

The protocol is PyOD's benchmark (`notebooks/benchmark.py`): for each set and each run, a random
60/40 train/test split (seed = run index), the detector fitted on the training split, outliers
included and labels unused, and the ROC-AUC of its scores on the test split, averaged over runs.
Standardisation with the training split's mean and deviation is done by `AnomalyModel` itself,
so the code measured is the code the service runs, defaults included.

The published figures are PyOD's `roc.csv` (IForest, LOF and OCSVM columns), kept beside the
data. The autoencoder and the ensemble have no published column. The targets: each single
detector within 0.01 of its published figure on average, and the ensemble at least as good as its
best member, per set and on average; per set it is not (ADR 0027), and the summary says on how many
sets it trails its best member and by how much.

The ensemble's weighting (docs/adr/0022-ensemble-weights.md) was designed on `DESIGN_SETS` only;
the other ODDS sets and two sets built from scikit-learn's copies of the UCI data the way ODDS
built its `wbc` and `wine` (`wbc-sklearn`, `wine-sklearn`) were held out, and the summary reports
the two groups apart. Fit time is reported as a ratio to Isolation Forest's on the same split.

Usage: python bench/anomaly_odds.py [--runs 10] [--datasets cardio,glass]
    [--detectors isolation_forest,ensemble] [--max-train N] [--data DIR]
Writes bench/results/anomaly_odds.json. Data: ../shared/data/anomaly/odds/ beside the repository
(or --data).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import loadmat
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from nexus.anomaly.detectors import Algorithm, AnomalyModel

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/anomaly/odds"
RESULTS = Path(__file__).resolve().parent / "results" / "anomaly_odds.json"
PUBLISHED_COLUMN = {
    Algorithm.ISOLATION_FOREST: "IForest",
    Algorithm.LOCAL_OUTLIER_FACTOR: "LOF",
    Algorithm.ONE_CLASS_SVM: "OCSVM",
}
SINGLE = list(PUBLISHED_COLUMN)
TOLERANCE = 0.01
TEST_SIZE = 0.4
DESIGN_SETS = ("cardio", "ionosphere", "mnist", "optdigits", "satimage-2", "vowels")
"""The sets the ensemble's calibration and weighting were chosen on; every other set is held out."""
SKLEARN_SETS = ("wbc-sklearn", "wine-sklearn")


@dataclass
class SetResult:
    """One dataset: mean AUC and seconds (fit + score) per detector."""

    dataset: str
    rows: int
    features: int
    outlier_share: float
    auc: dict[str, float] = field(default_factory=dict)
    auc_runs: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    published: dict[str, float] = field(default_factory=dict)

    @property
    def held_out(self) -> bool:
        """Whether the ensemble's design never saw this set."""
        return self.dataset not in DESIGN_SETS


def main() -> int:
    """Runs the benchmark, prints the table and the summary, writes the JSON; 1 if no data."""
    args = _arguments()
    if not args.data.is_dir():
        print(f"ODDS data not found at {args.data}; nothing to benchmark.", file=sys.stderr)
        return 1
    published = _published(args.data / "roc.csv")
    names = args.datasets or sorted(p.stem for p in args.data.glob("*.mat")) + list(SKLEARN_SETS)
    results = [_bench_set(name, args, published.get(name, {})) for name in names]
    summary = _summary(results, args.detectors, published)
    _print_table(results, args.detectors)
    _print_summary(summary)
    _write(results, summary, args)
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="random splits per set")
    parser.add_argument("--datasets", type=_names, default=[], help="comma-separated set names")
    parser.add_argument(
        "--detectors",
        type=lambda text: [Algorithm.parse(n) for n in _names(text)],
        default=list(Algorithm),
        help="comma-separated algorithms (default: all)",
    )
    parser.add_argument(
        "--max-train", type=int, default=0, help="subsample larger training splits (0: never)"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the ODDS .mat files")
    return parser.parse_args()


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _published(path: Path) -> dict[str, dict[str, float]]:
    """PyOD's published mean ROC-AUC by set and detector column."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(PUBLISHED_COLUMN.values())
    return {row["Data"]: {c: float(row[c]) for c in columns} for row in rows}


def _load(name: str, data: Path) -> tuple[np.ndarray, np.ndarray]:
    if name in SKLEARN_SETS:
        return _from_sklearn(name)
    mat = loadmat(data / f"{name}.mat")
    return np.asarray(mat["X"], dtype=np.float64), np.asarray(mat["y"]).ravel().astype(int)


def _from_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    """ODDS's recipe on scikit-learn's copy of the UCI set: `wbc` keeps every benign tumour and
    21 malignant ones as outliers (378 rows, 30 features); `wine` keeps classes 2 and 3 and 10
    rows of class 1 as outliers (129 rows, 13 features). The outliers are drawn with seed 0."""
    loaded = load_breast_cancer() if name == "wbc-sklearn" else load_wine()
    x, target = np.asarray(loaded.data, dtype=np.float64), np.asarray(loaded.target)
    outlier_class, count = (0, 21) if name == "wbc-sklearn" else (0, 10)
    outliers = np.random.default_rng(0).choice(
        np.flatnonzero(target == outlier_class), count, replace=False
    )
    keep = np.r_[np.flatnonzero(target != outlier_class), outliers]
    return x[keep], (target[keep] == outlier_class).astype(int)


def _bench_set(name: str, args: argparse.Namespace, published: dict[str, float]) -> SetResult:
    x, y = _load(name, args.data)
    result = SetResult(name, x.shape[0], x.shape[1], float(y.mean()))
    result.published = {
        a.value: published[PUBLISHED_COLUMN[a]]
        for a in args.detectors
        if a in PUBLISHED_COLUMN and published
    }
    for algorithm in args.detectors:
        started = time.perf_counter()
        runs = [_run(algorithm, x, y, run, args.max_train) for run in range(args.runs)]
        result.auc_runs[algorithm.value] = [auc for auc, _ in runs]
        result.auc[algorithm.value] = float(np.mean([auc for auc, _ in runs]))
        result.fit_seconds[algorithm.value] = float(np.mean([fit for _, fit in runs]))
        result.seconds[algorithm.value] = (time.perf_counter() - started) / args.runs
        print(
            f"  {name:<11} {algorithm.value:<21} auc {result.auc[algorithm.value]:.4f}  "
            f"{result.seconds[algorithm.value]:6.1f}s/run",
            file=sys.stderr,
            flush=True,
        )
    return result


def _run(
    algorithm: Algorithm, x: np.ndarray, y: np.ndarray, run: int, max_train: int
) -> tuple[float, float]:
    """ROC-AUC on the test split of split `run` (PyOD: test_size=0.4, random_state=run), and
    the seconds the fit took."""
    x_train, x_test, _, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=run)
    if max_train and x_train.shape[0] > max_train:
        keep = np.random.default_rng(run).choice(x_train.shape[0], max_train, replace=False)
        x_train = x_train[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's convergence chatter on some sets
        started = time.perf_counter()
        model = AnomalyModel.train(algorithm, x_train, seed=run)
        fit_seconds = time.perf_counter() - started
        scores, _ = model.score(x_test)
    return float(roc_auc_score(y_test, scores)), fit_seconds


def _summary(
    results: list[SetResult], detectors: list[Algorithm], published: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Means over sets, distances to the published figures, and the ensemble's verdict."""
    summary: dict[str, Any] = {"tolerance": TOLERANCE, "detectors": {}}
    for algorithm in detectors:
        summary["detectors"][algorithm.value] = _detector_summary(results, algorithm)
    with_published = [r for r in results if r.published]
    if Algorithm.ENSEMBLE in detectors and with_published:
        summary["ensemble_vs_best_published"] = _ensemble_verdict(with_published, published)
    members: list[Algorithm] = [a for a in detectors if a is not Algorithm.ENSEMBLE]
    if Algorithm.ENSEMBLE in detectors and members:
        summary["ensemble_vs_members"] = {
            group: _against_members([r for r in results if r.held_out is held_out], members)
            for group, held_out in (("design", False), ("held_out", True))
        }
    return summary


def _against_members(results: list[SetResult], members: list[Algorithm]) -> dict[str, Any]:
    """The ensemble against its members on one group of sets: per set, the best member and the
    gap; on average, the best member on average and the mean of the per-set best (an oracle
    that knows the labels); and the ensemble's fit time over Isolation Forest's."""
    if not results:
        return {}
    ensemble = Algorithm.ENSEMBLE.value
    per_set: dict[str, dict[str, Any]] = {}
    for r in results:
        best = max(members, key=lambda a: r.auc[a.value]).value
        per_set[r.dataset] = {
            "ensemble": r.auc[ensemble],
            "best_member": best,
            "best_member_auc": r.auc[best],
            "gap": r.auc[ensemble] - r.auc[best],
        }
    means = {a.value: float(np.mean([r.auc[a.value] for r in results])) for a in members}
    best_mean = max(means, key=lambda k: means[k])
    mean = float(np.mean([r.auc[ensemble] for r in results]))
    oracle = float(np.mean([max(r.auc[a.value] for a in members) for r in results]))
    summary = {
        "sets": [r.dataset for r in results],
        "ensemble_mean_auc": mean,
        "member_means": means,
        "best_member_on_average": best_mean,
        "margin_over_best_member_on_average": mean - means[best_mean],
        "mean_of_best_member_per_set": oracle,
        "margin_over_best_member_per_set": mean - oracle,
        "sets_at_least_best_member": [d for d, v in per_set.items() if v["gap"] >= 0],
        "trailing": _trailing(per_set),
        "per_set": per_set,
    }
    forest = Algorithm.ISOLATION_FOREST.value
    if Algorithm.ISOLATION_FOREST in members:
        summary["fit_time_over_isolation_forest"] = float(
            np.mean([r.fit_seconds[ensemble] for r in results])
            / np.mean([r.fit_seconds[forest] for r in results])
        )
    return summary


def _trailing(per_set: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How often and by how much the ensemble trails the best member of a set."""
    gaps = {d: v["gap"] for d, v in per_set.items() if v["gap"] < 0}
    worst = min(gaps, key=lambda d: gaps[d]) if gaps else None
    return {
        "sets": len(gaps),
        "over_0.01": sum(g < -0.01 for g in gaps.values()),
        "mean_gap_where_trailing": float(np.mean(list(gaps.values()))) if gaps else 0.0,
        "mean_gap": float(np.mean([v["gap"] for v in per_set.values()])),
        "worst_set": worst,
        "worst_gap": gaps[worst] if worst else 0.0,
    }


def _detector_summary(results: list[SetResult], algorithm: Algorithm) -> dict[str, Any]:
    mean = float(np.mean([r.auc[algorithm.value] for r in results]))
    results = [r for r in results if algorithm.value in r.published]
    if algorithm not in PUBLISHED_COLUMN or not results:
        return {"mean_auc": mean}
    mean_published_sets = float(np.mean([r.auc[algorithm.value] for r in results]))
    diffs = [r.auc[algorithm.value] - r.published[algorithm.value] for r in results]
    published = float(np.mean([r.published[algorithm.value] for r in results]))
    return {
        "mean_auc": mean,
        "mean_auc_on_published_sets": mean_published_sets,
        "published_mean_auc": published,
        "mean_difference": mean_published_sets - published,
        "within_tolerance_on_average": abs(mean_published_sets - published) <= TOLERANCE,
        "sets_within_tolerance": [
            r.dataset for r, d in zip(results, diffs, strict=True) if abs(d) <= TOLERANCE
        ],
        "sets_outside_tolerance": {
            r.dataset: d for r, d in zip(results, diffs, strict=True) if abs(d) > TOLERANCE
        },
    }


def _ensemble_verdict(
    results: list[SetResult], table: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The ensemble's mean against the best published single detector's mean, same sets."""
    published = {
        column: float(np.mean([table[r.dataset][column] for r in results]))
        for column in PUBLISHED_COLUMN.values()
    }
    best = max(published, key=lambda k: published[k])
    mean = float(np.mean([r.auc[Algorithm.ENSEMBLE.value] for r in results]))
    return {
        "ensemble_mean_auc": mean,
        "published_means": published,
        "best_published": best,
        "best_published_mean_auc": published[best],
        "margin": mean - published[best],
        "ensemble_at_least_best": mean >= published[best],
    }


def _print_table(results: list[SetResult], detectors: list[Algorithm]) -> None:
    header = f"{'dataset':<11} {'rows':>6} {'dims':>4}"
    for algorithm in detectors:
        header += f" | {_short(algorithm):>6} {'pub':>6} {'diff':>7}"
    print(header)
    print("-" * len(header))
    for r in results:
        line = f"{r.dataset:<11} {r.rows:>6} {r.features:>4}"
        for algorithm in detectors:
            line += " | " + _cells(r, algorithm)
        print(line)


def _cells(r: SetResult, algorithm: Algorithm) -> str:
    auc = r.auc[algorithm.value]
    if algorithm.value not in r.published:
        return f"{auc:>6.4f} {'-':>6} {'-':>7}"
    published = r.published[algorithm.value]
    return f"{auc:>6.4f} {published:>6.4f} {_signed(auc - published):>7}"


def _signed(value: float) -> str:
    """`value` as +0.0000, without the "-0.0000" of a tiny negative difference."""
    return f"{round(value, 4) + 0.0:+.4f}"


def _short(algorithm: Algorithm) -> str:
    return {
        Algorithm.ISOLATION_FOREST: "IForest",
        Algorithm.ONE_CLASS_SVM: "OCSVM",
        Algorithm.LOCAL_OUTLIER_FACTOR: "LOF",
        Algorithm.AUTOENCODER: "AE",
        Algorithm.ENSEMBLE: "Ens",
    }[algorithm]


def _print_summary(summary: dict[str, Any]) -> None:
    print("\nMean ROC-AUC over the sets:")
    for name, s in summary["detectors"].items():
        if "published_mean_auc" not in s:
            print(f"  {name:<21} {s['mean_auc']:.4f}  (no published figure)")
            continue
        verdict = "within" if s["within_tolerance_on_average"] else "OUTSIDE"
        print(
            f"  {name:<21} {s['mean_auc']:.4f}  on the ODDS sets "
            f"{s['mean_auc_on_published_sets']:.4f}  published {s['published_mean_auc']:.4f}  "
            f"diff {_signed(s['mean_difference'])}  {verdict} {TOLERANCE} on average; "
            f"per set within: {len(s['sets_within_tolerance'])}/"
            f"{len(s['sets_within_tolerance']) + len(s['sets_outside_tolerance'])}"
        )
        for dataset, diff in s["sets_outside_tolerance"].items():
            print(f"      outside on {dataset}: {_signed(diff)}")
    for group, verdict in summary.get("ensemble_vs_members", {}).items():
        _print_members_verdict(group, verdict)
    ensemble = summary.get("ensemble_vs_best_published")
    if ensemble:
        ok = "YES" if ensemble["ensemble_at_least_best"] else "NO"
        print(
            f"\nEnsemble {ensemble['ensemble_mean_auc']:.4f} vs best published single detector "
            f"({ensemble['best_published']}) {ensemble['best_published_mean_auc']:.4f}: "
            f"margin {_signed(ensemble['margin'])} -> at least the best: {ok}"
        )


def _print_members_verdict(group: str, verdict: dict[str, Any]) -> None:
    if not verdict:
        return
    sets = verdict["per_set"]
    print(f"\nEnsemble against its members, {group.replace('_', '-')} sets ({len(sets)}):")
    for dataset, v in sets.items():
        print(
            f"  {dataset:<13} ensemble {v['ensemble']:.4f}  best member {v['best_member']:<21} "
            f"{v['best_member_auc']:.4f}  gap {_signed(v['gap'])}"
        )
    print(
        f"  mean {verdict['ensemble_mean_auc']:.4f}; best member on average "
        f"({verdict['best_member_on_average']}) "
        f"{verdict['member_means'][verdict['best_member_on_average']]:.4f}, margin "
        f"{_signed(verdict['margin_over_best_member_on_average'])}; best member per set "
        f"{verdict['mean_of_best_member_per_set']:.4f}, margin "
        f"{_signed(verdict['margin_over_best_member_per_set'])}; at least the best member on "
        f"{len(verdict['sets_at_least_best_member'])}/{len(sets)} sets"
    )
    trailing = verdict["trailing"]
    if trailing["sets"]:
        print(
            f"  trails its best member on {trailing['sets']}/{len(sets)} sets "
            f"({trailing['over_0.01']} by more than 0.01), by "
            f"{-trailing['mean_gap_where_trailing']:.4f} on average there and at most "
            f"{-trailing['worst_gap']:.4f} ({trailing['worst_set']}); mean gap over all sets "
            f"{_signed(trailing['mean_gap'])}"
        )
    if "fit_time_over_isolation_forest" in verdict:
        print(f"  fit time: {verdict['fit_time_over_isolation_forest']:.1f}x Isolation Forest's")


def _write(results: list[SetResult], summary: dict[str, Any], args: argparse.Namespace) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "protocol": {
            "runs": args.runs,
            "test_size": TEST_SIZE,
            "split_seed": "run index",
            "max_train": args.max_train or None,
            "design_sets": list(DESIGN_SETS),
            "standardisation": "training split mean/std (AnomalyModel)",
        },
        "sets": [asdict(r) for r in results],
        "summary": summary,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
