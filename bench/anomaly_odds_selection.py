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
  training rows). Expensive: tens of seconds per split;
- `lscp_max`, `lscp_mean`: LSCP (Zhao et al., SDM 2019) on the surprises: per test row, its local
  region is the training rows among its `LOCAL_NEIGHBOURS` nearest in more than half of
  `LOCAL_BAGS` random feature subspaces; the member whose training surprises correlate best
  there with the pseudo ground truth (the members' maximum, or mean) scores the row;
  `lscp_max_z`: the same on z-scores, as the paper; `lscp_pyod`: PyOD's reference rule (z-scores,
  maximum, mean of the members in the most populated of four correlation bins);
- `select_v`, `select_h`: SELECT (Rayana and Akoglu, TKDD 2016), the mean of the members it keeps:
  vertically, by weighted correlation with the mean of all members (weight 1/rank); horizontally,
  by average precision on the rows that a majority of members puts in its top tenth;
- `hits_member`: the member of the largest authority when rows and members reinforce each other
  (HITS on rank-normalised training scores, as in Ma et al. 2023);
- `consensus_max`: weights from each member's Spearman correlation with the others' mean rank,
  weighted maximum (ADR 0022 compared it as a weighting);
- `pseudo_label_member`: the member of the best ROC-AUC on pseudo-labels from the others (the
  top tenth of their mean surprise);
- `lscp_factor`: LSCP with `factor_max`'s training scores as the pseudo ground truth;
- `grouped_factor_max`: `factor_max` with the pair of members of most dependent errors merged
  into one before the factor is fitted (after Jaffe et al., AISTATS 2016).

Only the test labels score the rules. The tables give each member's and each rule's ROC-AUC per
set, each rule's mean, its mean and worst gap to the set's best member, and on how many sets it
is within `NEAR` (0.01) of that member or above it.

Usage: python -m bench.anomaly_odds_selection [--runs 10] [--datasets cardio,vowels] [--volume]
    [--rules factor_max,lscp_max] [--data DIR] [--cache DIR] [--jobs N]
`--cache` keeps each split's member scores (`<set>-<run>.npz`), so that rules can be compared
again without refitting the members; `--jobs` runs splits in parallel processes.
By default the design sets only (`DESIGN_SETS`): the held-out sets are for reporting, once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

from bench.anomaly_odds import DATA, DESIGN_SETS, TEST_SIZE, _load, _names
from nexus.anomaly.detectors import make_detector
from nexus.anomaly.detectors._ensemble import (
    DEFAULT_MEMBERS,
    TAIL_SHARE,
    TailSurprise,
    _one_factor,
    agreement_weights,
)
from nexus.anomaly.detectors._model import Standardizer
from nexus.anomaly.detectors._types import FloatArray

SUB_FEATURES = 5
DRAWS = 10
SUB_ROWS = 1000
SUB_EPOCHS = 20
UNIFORM = 20_000
MASSES = np.arange(0.9, 0.999, 0.0001)
SHORT = ("IF", "LOF", "SVM", "AE")
LOCAL_NEIGHBOURS = 30
LOCAL_BAGS = 20
NEAR = 0.01


@dataclass
class Split:
    """One split: the members' raw and surprise scores (a row per member), the training rows."""

    raw_train: FloatArray
    train: FloatArray
    test: FloatArray
    x_train: FloatArray
    seed: int
    x_test: FloatArray
    test_raw: FloatArray
    regions: sparse.csr_matrix | None = None


Rule = Callable[[Split], FloatArray]


def main() -> int:
    """Prints the table; 1 if no data."""
    args = _arguments()
    if not args.data.is_dir():
        print(f"ODDS data not found at {args.data}; nothing to compare.", file=sys.stderr)
        return 1
    known = dict(RULES) | VOLUME_RULES
    names = args.rules or list(RULES) + (list(VOLUME_RULES) if args.volume else [])
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown rules {unknown}; rules are {', '.join(known)}", file=sys.stderr)
        return 1
    sets = args.datasets or list(DESIGN_SETS)
    jobs = [(name, run) for name in sets for run in range(args.runs)]
    work = partial(_job, rules=names, data=args.data, cache=args.cache)
    with ProcessPoolExecutor(args.jobs) if args.jobs > 1 else nullcontext() as pool:
        found = list(pool.map(work, jobs) if pool else map(work, jobs))
    table = {
        name: np.mean([a for (n, _), a in zip(jobs, found, strict=True) if n == name], axis=0)
        for name in sets
    }
    _print(table, names)
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="random splits per set")
    parser.add_argument("--datasets", type=_names, default=[], help="comma-separated set names")
    parser.add_argument("--rules", type=_names, default=[], help="comma-separated rule names")
    parser.add_argument("--volume", action="store_true", help="add the Excess-Mass/MV rules")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the ODDS .mat files")
    parser.add_argument(
        "--cache", type=Path, default=None, help="folder to keep the members' scores per split in"
    )
    parser.add_argument("--jobs", type=int, default=1, help="splits computed in parallel")
    return parser.parse_args()


def _job(job: tuple[str, int], rules: list[str], data: Path, cache: Path | None) -> list[float]:
    name, run = job
    x, y = _load(name, data)
    known = dict(RULES) | VOLUME_RULES
    aucs = _aucs(x, y, run, {r: known[r] for r in rules}, _cached(cache, name, run))
    print(f"  {name} split {run} done", file=sys.stderr, flush=True)
    return aucs


def _cached(cache: Path | None, name: str, run: int) -> Path | None:
    if cache is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"{name}-{run}.npz"


def _aucs(
    x: FloatArray, y: np.ndarray, run: int, rules: dict[str, Rule], cached: Path | None = None
) -> list[float]:
    """The members' test ROC-AUC, then each rule's. The members' scores come from `cached`
    when it exists (and are written there when it does not)."""
    x_train, x_test, _, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=run)
    standardizer = Standardizer.fit(x_train)
    train, test = standardizer.transform(x_train), standardizer.transform(x_test)
    if cached is not None and cached.exists():
        with np.load(cached) as stored:
            raw_train, raw_test = stored["train"], stored["test"]
    else:
        raw_train, raw_test = _member_scores(train, test, run)
        if cached is not None:
            np.savez(cached, train=raw_train, test=raw_test)
    calibrations = [TailSurprise(r) for r in raw_train]
    split = Split(
        raw_train,
        np.vstack([c(r) for c, r in zip(calibrations, raw_train, strict=True)]),
        np.vstack([c(r) for c, r in zip(calibrations, raw_test, strict=True)]),
        train,
        run,
        test,
        raw_test,
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


# Locally selective combination (LSCP: Zhao, Nasrullah, Hryniewicki and Li, SDM 2019)


def _local_regions(split: Split) -> sparse.csr_matrix:
    """The split's local regions (`_find_local_regions`), found once."""
    if split.regions is None:
        split.regions = _find_local_regions(split)
    return split.regions


def _find_local_regions(split: Split) -> sparse.csr_matrix:
    """Per test row, its local region among the training rows, as a 0/1 matrix: the training
    rows that are among its `LOCAL_NEIGHBOURS` nearest in more than half of `LOCAL_BAGS` random
    feature subspaces (half to all of the features each), as LSCP (and PyOD's reference) does."""
    rng = np.random.default_rng(split.seed)
    rows, width = split.x_train.shape
    tests = split.x_test.shape[0]
    k = min(LOCAL_NEIGHBOURS, rows)
    columns = []
    for _ in range(LOCAL_BAGS):
        features = rng.choice(
            width, int(rng.integers(max(1, width // 2), width + 1)), replace=False
        )
        index = NearestNeighbors(n_neighbors=k).fit(split.x_train[:, features])
        columns.append(index.kneighbors(split.x_test[:, features], return_distance=False))
    hits = np.hstack(columns)
    counts = sparse.coo_matrix(
        (np.ones(hits.size), (np.repeat(np.arange(tests), hits.shape[1]), hits.ravel())),
        shape=(tests, rows),
    ).tocsr()
    counts.data = (counts.data > LOCAL_BAGS // 2).astype(float)
    counts.eliminate_zeros()
    return counts


def _local_correlations(
    region: sparse.csr_matrix, target: FloatArray, scores: FloatArray
) -> FloatArray:
    """Pearson correlation, per test row (rows) and member (columns), of the members' training
    scores with the target over the test row's local region; where the region holds fewer
    than three rows, over all training rows."""
    size = np.asarray(region.sum(axis=1)).ravel()
    small = size < 3
    if small.any():
        region = sparse.vstack([region[~small], sparse.csr_matrix(np.ones((1, region.shape[1])))])
        order = np.where(small, region.shape[0] - 1, np.cumsum(~small) - 1)
    else:
        order = np.arange(region.shape[0])
    n = np.asarray(region.sum(axis=1))
    members = scores.T
    mean_t = (region @ target)[:, None] / n
    mean_s = (region @ members) / n
    cov = (region @ (members * target[:, None])) / n - mean_t * mean_s
    var_t = (region @ target**2)[:, None] / n - mean_t**2
    var_s = (region @ members**2) / n - mean_s**2
    denominator = np.sqrt(np.clip(var_t, 0.0, None) * np.clip(var_s, 0.0, None))
    correlations = np.where(
        denominator > 1e-12, cov / np.where(denominator > 0, denominator, 1.0), 0.0
    )
    return np.asarray(correlations[order])


def _lscp(pseudo: Callable[[FloatArray], FloatArray], zscores: bool = False) -> Rule:
    """LSCP with one member per test row: the one whose training scores correlate best with
    the pseudo ground truth (`pseudo` of the members' normalised training scores) over the
    test row's local region. Normalised: the tail surprises, or (`zscores`) z-scores of the
    training scores, as LSCP's paper and PyOD."""

    def rule(split: Split) -> FloatArray:
        train, test = _zscored(split) if zscores else (split.train, split.test)
        correlations = _local_correlations(_local_regions(split), pseudo(train), train)
        chosen = np.argmax(correlations, axis=1)
        return np.asarray(test[chosen, np.arange(test.shape[1])])

    return rule


def _lscp_pyod(split: Split) -> FloatArray:
    """PyOD's LSCP: z-scores, the maximum as pseudo ground truth, and per test row the mean
    z-score of the members in the most populated of `len(members)` correlation bins."""
    train, test = _zscored(split)
    correlations = _local_correlations(_local_regions(split), train.max(axis=0), train)
    scores = np.empty(test.shape[1])
    for i, row in enumerate(correlations):
        counts, edges = np.histogram(row, bins=len(row))
        top = int(np.argmax(counts))
        inside = (row >= edges[top]) & (row <= edges[top + 1])
        scores[i] = test[inside, i].mean()
    return scores


def _zscored(split: Split) -> tuple[FloatArray, FloatArray]:
    mean = split.raw_train.mean(axis=1, keepdims=True)
    std = np.maximum(split.raw_train.std(axis=1, keepdims=True), 1e-12)
    return (split.raw_train - mean) / std, (split.test_raw - mean) / std


# SELECT (Rayana and Akoglu, "Less is more: building selective anomaly ensembles", TKDD 2016)


def _weighted_pearson(a: FloatArray, b: FloatArray, weights: FloatArray) -> float:
    w = weights / weights.sum()
    da, db = a - (w * a).sum(), b - (w * b).sum()
    denominator = np.sqrt((w * da * da).sum() * (w * db * db).sum())
    return float((w * da * db).sum() / denominator) if denominator > 0 else 0.0


def _greedy(
    train: FloatArray, quality: Callable[[FloatArray], float], order: np.ndarray
) -> list[int]:
    """SELECT's sequential selection: start from the first member in `order`, add each next one
    if the mean of the chosen members' scores gets a better `quality`, else drop it."""
    chosen = [int(order[0])]
    best = quality(train[chosen].mean(axis=0))
    for member in order[1:]:
        trial = quality(train[[*chosen, int(member)]].mean(axis=0))
        if trial > best:
            chosen, best = [*chosen, int(member)], trial
    return chosen


def _select_vertical(split: Split) -> FloatArray:
    """SelectV: the target is the mean of all members' (normalised) scores; members are taken
    in order of weighted correlation with it (weight 1/rank in the target, so the top rows
    count most) and kept while they raise the combination's weighted correlation."""
    target = split.train.mean(axis=0)
    weights = 1.0 / rankdata(-target)
    quality = partial(_weighted_pearson, b=target, weights=weights)
    order = np.argsort([-quality(row) for row in split.train])
    return np.asarray(split.test[_greedy(split.train, quality, order)].mean(axis=0))


def _select_horizontal(split: Split) -> FloatArray:
    """SelectH: each member flags the rows beyond its tail's start (its top `TAIL_SHARE` of
    training rows); rows flagged by a majority of members are the pseudo-outliers; members
    are taken in order of their average precision on those and kept while they raise the
    combination's."""
    flags = split.train > -np.log(TAIL_SHARE)
    votes = flags.sum(axis=0)
    pseudo = votes > len(flags) / 2
    if not pseudo.any() or pseudo.all():
        pseudo = votes >= max(1, votes.max())
    if pseudo.all():
        return np.asarray(split.test.mean(axis=0))
    quality = partial(_average_precision, pseudo)
    order = np.argsort([-quality(row) for row in split.train])
    return np.asarray(split.test[_greedy(split.train, quality, order)].mean(axis=0))


def _average_precision(labels: np.ndarray, scores: FloatArray) -> float:
    return float(average_precision_score(labels, scores))


# Consensus on the training rows, by other means than ADR 0022's factor


def _hits_member(split: Split) -> FloatArray:
    """HITS (as in Ma et al. 2023): rows and members reinforce each other (a row is anomalous
    if good members rank it high, a member good if it ranks anomalous rows high); the member
    of the largest authority, on rank-normalised training scores."""
    ranks = np.vstack([rankdata(r) / r.size for r in split.raw_train]).T
    authority = np.ones(ranks.shape[1])
    for _ in range(100):
        hubs = ranks @ authority
        authority = ranks.T @ (hubs / np.linalg.norm(hubs))
        authority /= np.linalg.norm(authority)
    return np.asarray(split.test[int(np.argmax(authority))])


def _consensus_max(split: Split) -> FloatArray:
    """Weights from each member's Spearman correlation with the mean rank of the others
    (clipped at 0, over the largest), weighted maximum (ADR 0022 compared it as weights)."""
    ranks = np.vstack([rankdata(r) for r in split.raw_train])
    agreement = np.array(
        [
            np.corrcoef(ranks[i], np.delete(ranks, i, axis=0).mean(axis=0))[0, 1]
            for i in range(len(ranks))
        ]
    )
    weights = np.clip(agreement, 0.0, None) / max(float(agreement.max()), 1e-12)
    return np.asarray((weights[:, None] * split.test).max(axis=0))


def _lscp_factor(split: Split) -> FloatArray:
    """LSCP with the default combination (`factor_max` on the training rows) as the pseudo
    ground truth."""
    pseudo = _weighted_max(split.raw_train, split.train)
    correlations = _local_correlations(_local_regions(split), pseudo, split.train)
    chosen = np.argmax(correlations, axis=1)
    return np.asarray(split.test[chosen, np.arange(split.test.shape[1])])


def _grouped_factor_max(split: Split) -> FloatArray:
    """ADR 0022's factor weights with the pair of members whose errors are most dependent
    merged first (after Jaffe et al., "Unsupervised ensemble learning with dependent
    classifiers", AISTATS 2016): the pair with the largest residual correlation under the
    one-factor model becomes one member (its mean rank), the factor is fitted to the rest and
    the pair, and both members of the pair take the pair's weight."""
    ranks = np.vstack([rankdata(r) for r in split.raw_train])
    correlations = np.corrcoef(ranks)
    loadings = _one_factor(correlations)
    residual = correlations - np.outer(loadings, loadings)
    np.fill_diagonal(residual, -np.inf)
    i, j = np.unravel_index(int(np.argmax(residual)), residual.shape)
    others = [k for k in range(len(ranks)) if k not in (i, j)]
    merged = np.vstack([ranks[others], ranks[[i, j]].mean(axis=0)])
    weights = agreement_weights(merged)
    full = np.empty(len(ranks))
    full[others], full[[i, j]] = weights[:-1], weights[-1]
    return np.asarray((full[:, None] * split.test).max(axis=0))


def _pseudo_label_member(split: Split) -> FloatArray:
    """The member that best ranks pseudo-labels it had no part in: for each member, the rows
    in the top `TAIL_SHARE` of the other members' mean surprise are its pseudo-outliers, and
    the member of the highest ROC-AUC on them is chosen."""
    count = len(split.train)
    aucs = []
    for i in range(count):
        others = np.delete(split.train, i, axis=0).mean(axis=0)
        pseudo = others >= np.quantile(others, 1.0 - TAIL_SHARE)
        aucs.append(
            roc_auc_score(pseudo, split.train[i]) if 0 < pseudo.sum() < pseudo.size else 0.5
        )
    return np.asarray(split.test[int(np.argmax(aucs))])


RULES: dict[str, Rule] = {
    "factor_max": _factor_max,
    "equal_max": lambda s: np.asarray(s.test.max(axis=0)),
    "equal_mean": lambda s: np.asarray(s.test.mean(axis=0)),
    "central_member": _central_member,
    "central_candidate": _central_candidate,
    "lscp_max": _lscp(lambda t: t.max(axis=0)),
    "lscp_mean": _lscp(lambda t: t.mean(axis=0)),
    "lscp_max_z": _lscp(lambda t: t.max(axis=0), zscores=True),
    "lscp_pyod": _lscp_pyod,
    "select_v": _select_vertical,
    "select_h": _select_horizontal,
    "hits_member": _hits_member,
    "consensus_max": _consensus_max,
    "pseudo_label_member": _pseudo_label_member,
    "lscp_factor": _lscp_factor,
    "grouped_factor_max": _grouped_factor_max,
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
    """Per set the members' ROC-AUC; then per rule its ROC-AUC on each set, its mean, its gap
    to each set's best member (mean and worst) and on how many sets it is within `NEAR` of the
    best member or above it."""
    members = len(SHORT)
    sets = list(table)
    matrix = np.array([table[s] for s in sets])
    best = matrix[:, :members].max(axis=1)
    print(f"{'member':<19}" + "".join(f"{s[:9]:>10}" for s in sets) + f"{'mean':>8}")
    for i, short in enumerate(SHORT):
        print(
            f"{short:<19}"
            + "".join(f"{a:>10.4f}" for a in matrix[:, i])
            + f"{matrix[:, i].mean():>8.4f}"
        )
    print(f"{'best (oracle)':<19}" + "".join(f"{a:>10.4f}" for a in best) + f"{best.mean():>8.4f}")
    print(
        f"\n{'rule':<19}"
        + "".join(f"{s[:9]:>10}" for s in sets)
        + f"{'mean':>8}{'gap':>8}{'worst':>8}  near"
    )
    for j, rule in enumerate(rules):
        aucs = matrix[:, members + j]
        gaps = aucs - best
        near = int((gaps >= -NEAR).sum())
        print(
            f"{rule:<19}"
            + "".join(f"{a:>10.4f}" for a in aucs)
            + f"{aucs.mean():>8.4f}{gaps.mean():>+8.4f}{gaps.min():>+8.4f}  {near}/{len(sets)}"
        )


if __name__ == "__main__":
    sys.exit(main())
