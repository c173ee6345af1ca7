"""Label-free ways to weigh or select the batch ensemble's members, compared on the ODDS sets.

The protocol is `bench/anomaly_odds.py`'s (a random 60/40 split per run, seed = run index,
standardised with the training split's statistics). The four members are fitted once per split
with the seed the ensemble gives them, and every rule turns their unlabelled training scores
(and, for the volume rules, the unlabelled training rows) into one score per test row:

- `factor_max`: the default (ADR 0022): tail surprises, weights from a one-factor model of the
  members' rank correlations, weighted maximum;
- `equal_max`, `equal_mean`: the surprises, unweighted;
- `central_member`: the member whose ranking of the training rows correlates most, on average,
  with the other members' (model centrality, as in Ma et al. 2023);
- `central_candidate`: whichever of the members and `factor_max` is most central in that sense
  (a per-set choice between the combination and a single member);
- `excess_mass`, `mass_volume` (with `--volume`): whichever of the members and `factor_max` has
  the largest area under the Excess-Mass curve, or the smallest under the Mass-Volume curve for
  mass 0.9-0.999 (Goix, "How to evaluate the quality of unsupervised anomaly detection
  algorithms?", 2016, and his reference code). As there: volumes by uniform sampling of the
  evaluation rows' bounding box, and above `SUB_FEATURES` features, the average over `DRAWS`
  random subsets of that many features, each with its own fit (members refitted on up to
  `SUB_ROWS` training rows, the autoencoder for `SUB_EPOCHS` epochs; evaluated on other
  training rows). Expensive: tens of seconds per split.

Only the test labels score the rules. The table gives each member and each rule per set and each
rule's gap to the set's best member; then the means, the mean gap and the worst gap.

Usage: python -m bench.anomaly_odds_selection [--runs 10] [--datasets cardio,vowels] [--volume]
    [--data DIR]
By default the design sets only (`DESIGN_SETS`): the held-out sets are for reporting, once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from bench.anomaly_odds import DATA, DESIGN_SETS, TEST_SIZE, _load, _names
from nexus.anomaly.detectors import make_detector
from nexus.anomaly.detectors._ensemble import DEFAULT_MEMBERS, TailSurprise, agreement_weights
from nexus.anomaly.detectors._model import Standardizer
from nexus.anomaly.detectors._types import FloatArray

SUB_FEATURES = 5
DRAWS = 10
SUB_ROWS = 1000
SUB_EPOCHS = 20
UNIFORM = 20_000
MASSES = np.arange(0.9, 0.999, 0.0001)
SHORT = ("IF", "LOF", "SVM", "AE")


@dataclass
class Split:
    """One split: the members' raw and surprise scores (a row per member), the training rows."""

    raw_train: FloatArray
    train: FloatArray
    test: FloatArray
    x_train: FloatArray
    seed: int


Rule = Callable[[Split], FloatArray]


def main() -> int:
    """Prints the table; 1 if no data."""
    args = _arguments()
    if not args.data.is_dir():
        print(f"ODDS data not found at {args.data}; nothing to compare.", file=sys.stderr)
        return 1
    rules = dict(RULES) | (VOLUME_RULES if args.volume else {})
    table: dict[str, FloatArray] = {}
    for name in args.datasets or list(DESIGN_SETS):
        x, y = _load(name, args.data)
        runs = [_aucs(x, y, run, rules) for run in range(args.runs)]
        table[name] = np.mean(runs, axis=0)
        print(f"  {name} done", file=sys.stderr, flush=True)
    _print(table, list(rules))
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="random splits per set")
    parser.add_argument("--datasets", type=_names, default=[], help="comma-separated set names")
    parser.add_argument("--volume", action="store_true", help="add the Excess-Mass/MV rules")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the ODDS .mat files")
    return parser.parse_args()


def _aucs(x: FloatArray, y: np.ndarray, run: int, rules: dict[str, Rule]) -> list[float]:
    """The members' test ROC-AUC, then each rule's."""
    x_train, x_test, _, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=run)
    standardizer = Standardizer.fit(x_train)
    train, test = standardizer.transform(x_train), standardizer.transform(x_test)
    raw_train, raw_test = _member_scores(train, test, run)
    calibrations = [TailSurprise(r) for r in raw_train]
    split = Split(
        raw_train,
        np.vstack([c(r) for c, r in zip(calibrations, raw_train, strict=True)]),
        np.vstack([c(r) for c, r in zip(calibrations, raw_test, strict=True)]),
        train,
        run,
    )
    scores = [*raw_test, *(rule(split) for rule in rules.values())]
    return [float(roc_auc_score(y_test, s)) for s in scores]


def _member_scores(
    train: FloatArray, test: FloatArray, seed: int, params: dict[str, str] | None = None
) -> tuple[FloatArray, FloatArray]:
    """Each member fitted on `train` as the ensemble fits it: its training and test scores."""
    raw_train, raw_test = [], []
    for algorithm in DEFAULT_MEMBERS:
        own = (params or {}) if algorithm.value == "autoencoder" else None
        member = make_detector(algorithm, own, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw_train.append(member.fit_score(train))
            raw_test.append(member.score(test))
    return np.vstack(raw_train), np.vstack(raw_test)


# Rules on the training scores


def _factor_max(split: Split) -> FloatArray:
    return _weighted_max(split.raw_train, split.test)


def _weighted_max(raw_train: FloatArray, surprises: FloatArray) -> FloatArray:
    weights = agreement_weights(raw_train)[:, np.newaxis]
    return np.asarray((weights * surprises).max(axis=0))


def _centrality(raw_train: FloatArray, candidates: FloatArray) -> FloatArray:
    """Each candidate's mean Spearman correlation with the members' training scores (a
    member's with itself left out)."""
    members = np.vstack([rankdata(r) for r in raw_train])
    ranked = np.vstack([rankdata(c) for c in candidates])
    both = np.corrcoef(np.vstack([ranked, members]))[: len(ranked), len(ranked) :]
    exact = np.isclose(both, 1.0)
    return np.asarray(np.where(exact, 0.0, both).sum(axis=1) / (~exact).sum(axis=1))


def _central_member(split: Split) -> FloatArray:
    return np.asarray(split.test[int(np.argmax(_centrality(split.raw_train, split.train)))])


def _central_candidate(split: Split) -> FloatArray:
    train = np.vstack([split.train, _weighted_max(split.raw_train, split.train)])
    test = np.vstack([split.test, _factor_max(split)])
    return np.asarray(test[int(np.argmax(_centrality(split.raw_train, train)))])


RULES: dict[str, Rule] = {
    "factor_max": _factor_max,
    "equal_max": lambda s: np.asarray(s.test.max(axis=0)),
    "equal_mean": lambda s: np.asarray(s.test.mean(axis=0)),
    "central_member": _central_member,
    "central_candidate": _central_candidate,
}


# Rules on the volumes of the candidates' level sets (Goix 2016)


def _volume_criteria(split: Split) -> tuple[FloatArray, FloatArray]:
    """Per candidate (the members, then the weighted maximum): the mean rank, over draws, of
    its Excess-Mass area (higher is better) and of its Mass-Volume area (lower is better)."""
    rng = np.random.default_rng(split.seed)
    rows, width = split.x_train.shape
    draws = DRAWS if width > SUB_FEATURES else 3
    excess, volume = [], []
    for _ in range(draws):
        features = (
            np.sort(rng.choice(width, SUB_FEATURES, replace=False))
            if width > SUB_FEATURES
            else np.arange(width)
        )
        order = rng.permutation(rows)
        fit = split.x_train[np.ix_(order[: min(rows // 2, SUB_ROWS)], features)]
        held = split.x_train[np.ix_(order[rows // 2 : rows // 2 + SUB_ROWS], features)]
        low, high = held.min(axis=0), held.max(axis=0)
        size = float(np.prod(np.maximum(high - low, 1e-9)))
        uniform = rng.uniform(low, high, size=(UNIFORM, len(features)))
        both = np.vstack([held, uniform])
        raw_fit, raw_both = _member_scores(fit, both, split.seed, {"epochs": str(SUB_EPOCHS)})
        calibrations = [TailSurprise(r) for r in raw_fit]
        surprise = np.vstack([c(r) for c, r in zip(calibrations, raw_both, strict=True)])
        candidates = np.vstack([surprise, _weighted_max(raw_fit, surprise)])
        areas = [_em_mv(-c[: len(held)], -c[len(held) :], size) for c in candidates]
        excess.append(rankdata([a for a, _ in areas]))
        volume.append(rankdata([-v for _, v in areas]))
    return np.mean(excess, axis=0), np.mean(volume, axis=0)


def _em_mv(normal: FloatArray, uniform: FloatArray, size: float) -> tuple[float, float]:
    """Areas under the Excess-Mass curve (t up to where it falls to 0.9) and the Mass-Volume
    curve (mass 0.9-0.999) of a scoring function, higher = more normal, as Goix's code."""
    levels = np.unique(np.quantile(normal, np.linspace(0.0, 1.0, 400)))
    mass = (normal[np.newaxis, :] > levels[:, np.newaxis]).mean(axis=1)
    lebesgue = (uniform[np.newaxis, :] > levels[:, np.newaxis]).mean(axis=1) * size
    t = np.arange(0.0, 100.0 / size, 0.01 / size)
    em = np.maximum((mass[np.newaxis, :] - t[:, np.newaxis] * lebesgue).max(axis=1), 0.0)
    em[0] = 1.0
    end = int(np.argmax(em <= 0.9)) + 1
    end = len(t) if end == 1 else end
    descending = np.sort(normal)[::-1]
    at = np.minimum(np.ceil(MASSES * len(normal)).astype(int) - 1, len(normal) - 1)
    mv = (uniform[np.newaxis, :] >= descending[at][:, np.newaxis]).mean(axis=1) * size
    return float(np.trapezoid(em[:end], t[:end])), float(np.trapezoid(mv, MASSES))


def _by_volume(which: int) -> Rule:
    def rule(split: Split) -> FloatArray:
        ranks = _volume_criteria(split)[which]
        test = np.vstack([split.test, _factor_max(split)])
        return np.asarray(test[int(np.argmax(ranks))])

    return rule


VOLUME_RULES: dict[str, Rule] = {"excess_mass": _by_volume(0), "mass_volume": _by_volume(1)}


def _print(table: dict[str, FloatArray], rules: list[str]) -> None:
    members = len(SHORT)
    print(f"{'set':<13}" + "".join(f"{s:>7}" for s in SHORT) + "".join(f"{r:>19}" for r in rules))
    for name, aucs in table.items():
        best = aucs[:members].max()
        cells = "".join(f"{a:>11.4f} ({a - best:+.3f})" for a in aucs[members:])
        print(f"{name:<13}" + "".join(f"{a:>7.4f}" for a in aucs[:members]) + cells)
    matrix = np.array(list(table.values()))
    gaps = matrix[:, members:] - matrix[:, :members].max(axis=1, keepdims=True)
    means = matrix.mean(axis=0)
    print(
        f"{'mean':<13}"
        + "".join(f"{a:>7.4f}" for a in means[:members])
        + "".join(f"{a:>19.4f}" for a in means[members:])
    )
    for label, values in (("mean gap", gaps.mean(axis=0)), ("worst gap", gaps.min(axis=0))):
        print(f"{label:<13}" + " " * 7 * members + "".join(f"{g:>+19.4f}" for g in values))
    print(f"{'best member':<13}{matrix[:, :members].max(axis=1).mean():>7.4f} (mean per set)")


if __name__ == "__main__":
    sys.exit(main())
