"""The anomaly service over real gRPC: train, score, explain, datasets, bad input, A/B, replicas."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from anomaly_testing import Client, StartHost, cloud, make_key, points, unique
from prometheus_client import REGISTRY

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.common.server import ServiceHost

pytestmark = pytest.mark.integration

IFOREST = pb.ALGORITHM_ISOLATION_FOREST


async def train(
    client: Client, name: str, *, promote: str = "production", seed: int = 0
) -> pb.TrainDetectorResponse:
    request = pb.TrainDetectorRequest(
        name=name, algorithm=IFOREST, points=points(cloud(seed=seed)), promote_to=promote, seed=seed
    )
    return await client.anomaly.TrainDetector(request, metadata=client.metadata)


async def test_train_promote_score_reports_version(client: Client) -> None:
    name = unique()
    trained = await train(client, name)
    assert trained.version.version == "1"
    assert trained.version.sha256
    assert trained.version.metrics["train_rows"] > 0
    outlier = np.full((1, 4), 8.0)
    batch = np.vstack([cloud(5, seed=9), outlier])
    reply = await client.anomaly.ScorePoints(
        pb.ScorePointsRequest(name=name, points=points(batch)), metadata=client.metadata
    )
    assert [s.is_anomaly for s in reply.scores][-1] is True
    assert sum(s.is_anomaly for s in reply.scores[:-1]) <= 1
    assert reply.model.version == "1"
    assert reply.model.alias == "production"
    assert reply.scores[-1].id == "p5"


async def test_an_ensemble_reports_its_member_weights_with_the_version(client: Client) -> None:
    members = ["isolation_forest", "local_outlier_factor", "one_class_svm"]
    request = pb.TrainDetectorRequest(
        name=unique(),
        algorithm=pb.ALGORITHM_ENSEMBLE,
        points=points(cloud(200)),
        parameters={"members": ",".join(members)},
    )
    trained = await client.anomaly.TrainDetector(request, metadata=client.metadata)
    weights = {k: v for k, v in trained.version.metrics.items() if k.startswith("weight.")}
    assert sorted(weights) == sorted(f"weight.{m}" for m in members)
    assert max(weights.values()) == 1.0
    assert all(0.0 <= w <= 1.0 for w in weights.values())


async def test_explain_names_the_driving_feature(client: Client) -> None:
    name = unique()
    request = pb.TrainDetectorRequest(
        name=name,
        algorithm=IFOREST,
        points=points(cloud()),
        feature_names=["a", "b", "c", "d"],
        promote_to="production",
    )
    await client.anomaly.TrainDetector(request, metadata=client.metadata)
    point = pb.Point(values=[0.0, 0.0, 9.0, 0.0])
    reply = await client.anomaly.ExplainPoint(
        pb.ExplainPointRequest(name=name, point=point), metadata=client.metadata
    )
    assert reply.is_anomaly
    assert reply.contributions[0].feature == "c"
    assert reply.contributions[0].index == 2


async def test_dataset_upload_then_train_by_id(client: Client) -> None:
    rows = cloud(200, 3)
    csv = "x,y,z,label\n" + "\n".join(",".join(map(str, r)) + ",0" for r in rows)
    uploaded = await client.anomaly.UploadDataset(
        pb.UploadDatasetRequest(name="metrics", csv=csv.encode(), label_column="label"),
        metadata=client.metadata,
    )
    assert uploaded.dataset.rows == 200
    assert uploaded.dataset.features == 3
    assert list(uploaded.dataset.feature_names) == ["x", "y", "z"]
    trained = await client.anomaly.TrainDetector(
        pb.TrainDetectorRequest(name=unique(), algorithm=IFOREST, dataset_id=uploaded.dataset.id),
        metadata=client.metadata,
    )
    assert trained.version.parameters["dataset_id"] == uploaded.dataset.id


@pytest.mark.parametrize(
    ("values", "code", "says"),
    [
        ([[1.0, float("nan"), 0.0, 0.0]], grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        ([[1.0, 2.0]], grpc.StatusCode.INVALID_ARGUMENT, "trained on 4"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "required"),
    ],
)
async def test_bad_points_are_refused_clearly(
    client: Client, values: list[list[float]], code: grpc.StatusCode, says: str
) -> None:
    name = unique()
    await train(client, name)
    request = pb.ScorePointsRequest(name=name, points=[pb.Point(values=v) for v in values])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.anomaly.ScorePoints(request, metadata=client.metadata)
    assert caught.value.code() == code
    assert says.lower() in (caught.value.details() or "").lower()


async def test_values_at_the_float_limit_train_and_a_diverging_fit_registers_nothing(
    client: Client,
) -> None:
    extreme = cloud(60, 3)
    extreme[:5, 0] = 1e308
    extreme[5:10, 1] = -1e308
    trained = await client.anomaly.TrainDetector(
        pb.TrainDetectorRequest(
            name=unique(), algorithm=pb.ALGORITHM_ONE_CLASS_SVM, points=points(extreme)
        ),
        metadata=client.metadata,
    )
    assert np.isfinite(trained.threshold)

    name = unique()
    diverging = pb.TrainDetectorRequest(
        name=name,
        algorithm=pb.ALGORITHM_ONE_CLASS_SVM,
        points=points(cloud(60, 3)),
        parameters={"kernel": "poly", "gamma": "1e300", "degree": "10"},
        promote_to="production",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.anomaly.TrainDetector(diverging, metadata=client.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.models.GetModel(models_pb.GetModelRequest(name=name), metadata=client.metadata)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_names_follow_the_one_rule(client: Client) -> None:
    train = pb.TrainDetectorRequest(name="-", algorithm=IFOREST, points=points(cloud(20)))
    bind = pb.BindSourceRequest(source="_cpu", detector="d")
    for call, request in ((client.anomaly.TrainDetector, train), (client.anomaly.BindSource, bind)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, metadata=client.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "starting with a letter or digit" in (caught.value.details() or "")


async def test_unknown_detector_is_not_found(client: Client) -> None:
    request = pb.ScorePointsRequest(name=unique(), points=[pb.Point(values=[1.0])])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.anomaly.ScorePoints(request, metadata=client.metadata)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_oversized_batch_is_resource_exhausted(
    start_anomaly: StartHost, admin_key: str
) -> None:
    host = await start_anomaly(max_batch_points=50)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        client = Client(channel, admin_key)
        request = pb.ScorePointsRequest(name=unique(), points=points(cloud(51)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.anomaly.ScorePoints(request, metadata=client.metadata)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_missing_and_wrong_keys(anomaly: ServiceHost, nexus_settings: object) -> None:
    reader = await make_key(anomaly.common, "models:read")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{anomaly.port}") as channel:
        request = pb.ScorePointsRequest(name="x", points=[pb.Point(values=[1.0])])
        with pytest.raises(grpc.aio.AioRpcError) as none:
            await Client(channel, "").anomaly.ScorePoints(request)
        client = Client(channel, reader)
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await client.anomaly.ScorePoints(request, metadata=client.metadata)
    assert none.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_ab_split_is_sticky_and_reports_version(client: Client) -> None:
    name = unique()
    await train(client, name, seed=1)
    await train(client, name, promote="", seed=2)
    split = [
        models_pb.TrafficSplit(version="1", weight=50),
        models_pb.TrafficSplit(version="2", weight=50),
    ]
    await client.models.SetTrafficSplit(
        models_pb.SetTrafficSplitRequest(
            service="anomaly", name=name, alias="production", splits=split
        ),
        metadata=client.metadata,
    )
    served: dict[str, set[str]] = {}
    for user in [f"user-{i}" for i in range(40)]:
        for _ in range(3):
            reply = await client.anomaly.ScorePoints(
                pb.ScorePointsRequest(name=name, points=points(cloud(2)), routing_key=user),
                metadata=client.metadata,
            )
            served.setdefault(user, set()).add(reply.model.version)
    assert all(len(versions) == 1 for versions in served.values())
    assert {v for versions in served.values() for v in versions} == {"1", "2"}


async def test_second_replica_follows_a_promotion(start_anomaly: StartHost, admin_key: str) -> None:
    first, second = await start_anomaly(), await start_anomaly()
    name = unique()
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
    ):
        a, b = Client(one, admin_key), Client(two, admin_key)
        await train(a, name, seed=1)
        await train(a, name, promote="", seed=2)
        await a.models.PromoteModel(
            models_pb.PromoteModelRequest(
                service="anomaly", name=name, version="2", alias="production"
            ),
            metadata=a.metadata,
        )
        request = pb.ScorePointsRequest(name=name, points=points(cloud(2)))
        for _ in range(50):
            reply = await b.anomaly.ScorePoints(request, metadata=b.metadata)
            if reply.model.version == "2":
                break
            await asyncio.sleep(0.05)
    assert reply.model.version == "2"


async def test_registry_is_scoped_to_the_service(client: Client) -> None:
    request = models_pb.ListModelsRequest(service="vision")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.models.ListModels(request, metadata=client.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_oversized_csv_is_refused_as_too_large(
    start_anomaly: StartHost, admin_key: str
) -> None:
    host = await start_anomaly(max_dataset_bytes=100)
    csv = ("a,b\n" + "1.0,2.0\n" * 50).encode()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        client = Client(channel, admin_key)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.anomaly.UploadDataset(
                pb.UploadDatasetRequest(name="big", csv=csv), metadata=client.metadata
            )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "csv (bytes)" in (caught.value.details() or "")


def _batches() -> tuple[float, float]:
    """Batches the anomaly model runtime ran so far, and the requests they held."""
    labels = {"service": "anomaly", "batcher": "model"}
    count = REGISTRY.get_sample_value("nexus_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("nexus_batch_size_sum", labels) or 0.0
    return count, total


async def test_concurrent_small_requests_are_scored_as_one_matrix(
    start_anomaly: StartHost, admin_key: str
) -> None:
    host = await start_anomaly(batch_max_wait_ms=50)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        client = Client(channel, admin_key)
        name = unique()
        await train(client, name)
        requests = [
            pb.ScorePointsRequest(name=name, points=points(cloud(2, seed=i))) for i in range(64)
        ]
        score = client.anomaly.ScorePoints
        before = _batches()
        together = await asyncio.gather(*(score(r, metadata=client.metadata) for r in requests))
        after = _batches()
        alone = [await score(r, metadata=client.metadata) for r in requests]
    assert after[1] - before[1] == 64  # every request went through the batcher...
    assert after[0] - before[0] <= 8  # ...in a few batches
    for merged, single in zip(together, alone, strict=True):
        assert [s.score for s in merged.scores] == pytest.approx([s.score for s in single.scores])
        assert merged.model.version == "1"
