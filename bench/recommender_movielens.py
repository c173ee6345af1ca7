"""The recommender's algorithms on MovieLens 100K, scored with Microsoft Recommenders' protocol.

Protocol (Microsoft Recommenders' movielens benchmark): every rating is a positive interaction;
a stratified 75/25 random split of each user's ratings; each user's top 10 of the movies they
did not rate in the training part; MAP, nDCG@10, Precision@10 and Recall@10 against the held-out
ratings (binary relevance), averaged over users with ratings on both sides. Each algorithm goes
through the service's own code (`nexus.recommender.recommending.evaluate`: the same split,
training and ranking the Evaluate RPC uses). Published nDCG@10 on the same protocol, for
comparison: BiVAE 0.475, BPR (cornac) 0.442, LightGCN 0.420, SAR 0.383.

MovieLens' terms forbid redistributing it: it is read from the `recbole` wheel, which ships it
(`pip download --no-deps recbole` into a temporary directory, or --wheel PATH for one on disk);
nothing is copied into the repository.

Usage: python bench/recommender_movielens.py [--wheel PATH] [--algorithms als,bpr,ease,popularity]
       [--seeds 42] [--threads 1]
Writes bench/results/recommender_movielens.json.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from nexus.recommender.recommending import Algorithm, CatalogLog, Config, Interaction, evaluate

ROOT = Path(__file__).resolve().parents[1]
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
PUBLISHED = {"BiVAE": 0.475, "BPR (cornac)": 0.442, "LightGCN": 0.420, "SAR": 0.383}
CONFIGS = {
    "als": Config(Algorithm.ALS, factors=64, iterations=15, regularization=0.05, alpha=1.0),
    "bpr": Config(Algorithm.BPR, factors=200, iterations=100, learning_rate=0.01),
    "ease": Config(Algorithm.EASE, ease_lambda=500.0, binary=True),
    "popularity": Config(Algorithm.POPULARITY),
}


def wheel_path(given: str | None, folder: Path) -> Path:
    """The recbole wheel: the one given, else downloaded (no dependencies) into `folder`."""
    if given:
        return Path(given)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder)]
    subprocess.run([*command, "recbole"], check=True)
    return next(folder.glob("recbole-*.whl"))


def movielens(wheel: Path) -> CatalogLog:
    """MovieLens 100K's ratings, in time order, as one catalog's log."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(MEMBER).decode()
    rows = np.loadtxt(io.StringIO(text), skiprows=1, dtype=np.int64)
    rows = rows[np.argsort(rows[:, 3], kind="stable")]
    log = CatalogLog()
    log.add((Interaction(str(u), str(i), float(r), float(t)) for u, i, r, t in rows), sequence=1)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="a recbole wheel on disk (default: pip download it)")
    parser.add_argument("--algorithms", default=",".join(CONFIGS))
    parser.add_argument("--seeds", default="42", help="split seeds, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    names = args.algorithms.split(",")
    with tempfile.TemporaryDirectory() as folder:
        log = movielens(wheel_path(args.wheel, Path(folder)))
    snapshot = log.snapshot()
    print(f"MovieLens 100K: {log.users} users, {log.items} movies, {log.interactions} ratings")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for seed in (int(s) for s in args.seeds.split(",")):
        report = evaluate(
            snapshot, [CONFIGS[n] for n in names], k=10, seed=seed, threads=args.threads
        )
        for name, scored in zip(names, report.scored, strict=True):
            m = scored.metrics
            row = {"map": m.map, "ndcg": m.ndcg, "precision": m.precision, "recall": m.recall}
            results[name].append(row | {"fit_s": scored.fit_seconds, "seed": seed})
    _print(results)
    out = ROOT / "bench" / "results" / "recommender_movielens.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "published_ndcg": PUBLISHED}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


def _print(results: dict[str, list[dict[str, float]]]) -> None:
    print(f"{'algorithm':<14}{'MAP':>8}{'nDCG@10':>9}{'P@10':>8}{'R@10':>8}{'fit s':>8}")
    for name, rows in results.items():
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        print(
            f"{name:<14}{mean['map']:>8.3f}{mean['ndcg']:>9.3f}{mean['precision']:>8.3f}"
            f"{mean['recall']:>8.3f}{mean['fit_s']:>8.1f}"
        )
    for name, ndcg in PUBLISHED.items():
        print(f"{name + ' (pub.)':<14}{'':>8}{ndcg:>9.3f}")


if __name__ == "__main__":
    main()
