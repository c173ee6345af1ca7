"""Content-based and hybrid models over real gRPC with a real NATS and the packaged MiniLM
model: a new item with text reaches a user's top-N by its content score, a user with little
history gets content-based items, the blend is chosen per training and per request, the
hybrid ranks at least as well as its members on generated data, and bad options are refused."""

from __future__ import annotations

import grpc
import pytest
from recommender_testing import (
    TOPICS,
    Client,
    clustered_topics,
    group,
    seen,
    themed_items,
    two_groups,
    upsert,
)

from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.testing.status import field_of

pytestmark = pytest.mark.timeout(180)
EASE, CONTENT = pb.ALGORITHM_EASE, pb.ALGORITHM_CONTENT
ROCKET = pb.Item(
    id="rocket",
    text="astronauts fly a rocket to a distant planet in this science fiction film",
    attributes={"genre": "space", "title": "Rocket"},
)


async def _hybrid(client: Client, **hyper: float) -> str:
    catalog = await client.catalog("hybrid")
    await client.ingest(catalog, two_groups())
    await upsert(client, catalog, [*themed_items("ab"), ROCKET])
    done = await client.train(catalog, EASE, **hyper)
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    return catalog


async def test_a_new_item_with_text_reaches_the_top_n_by_its_content(client: Client) -> None:
    catalog = await _hybrid(client, content_weight=0.5)

    hybrid = await client.recommend(catalog, "ua0", count=5)
    alone = await client.recommend(catalog, "ua0", count=5, content_weight=0.0)

    items = [i.item_id for i in hybrid.items]
    assert "rocket" in items  # no interactions: its text is like the user's space films
    assert set(items) - {"rocket"} <= set(group("a")) - seen("ua0")
    reason = next(i.reason for i in hybrid.items if i.item_id == "rocket")
    assert (reason.kind, reason.item_id in seen("ua0")) == (pb.REASON_KIND_SIMILAR_TO_SEEN, True)
    assert "rocket" not in [i.item_id for i in alone.items]  # per request: EASE alone
    diverse = await client.recommend(catalog, "ua0", count=5, diversity=0.5)
    assert len({i.item_id for i in diverse.items}) == 5  # by the cosine of the embeddings


async def test_a_hybrid_without_item_text_is_its_collaborative_model(client: Client) -> None:
    catalog = await client.catalog("hybrid")
    await client.ingest(catalog, two_groups())  # no items stored: nothing to embed
    done = await client.train(catalog, EASE, content_weight=0.5)
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error

    reply = await client.recommend(catalog, "ua0", count=4)

    assert {i.item_id for i in reply.items} == set(group("a")) - seen("ua0")


async def test_little_history_gets_content_and_no_history_popular_items(client: Client) -> None:
    catalog = await _hybrid(client, content_weight=0.3)
    await client.ingest(catalog, [("newcomer", "rocket")])  # an item no model knows

    newcomer = await client.recommend(catalog, "newcomer", count=6)
    stranger = await client.recommend(catalog, "stranger", count=6)

    assert {i.item_id for i in newcomer.items} <= set(group("a"))  # space films, by content
    assert all(i.reason.kind == pb.REASON_KIND_SIMILAR_TO_SEEN for i in newcomer.items)
    assert all(i.reason.kind == pb.REASON_KIND_POPULAR for i in stranger.items)


async def test_the_content_model_alone_and_the_blend_chosen_per_training(client: Client) -> None:
    catalog = await _hybrid(client)  # content_weight 0: EASE alone
    assert "rocket" not in [i.item_id for i in (await client.recommend(catalog, "ua0")).items]
    done = await client.train(catalog, CONTENT)
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    result = pb.TrainResponse()
    assert done.response.Unpack(result)

    reply = await client.recommend(catalog, "ub3", count=4)

    assert result.version.parameters["content_weight"] == "1"
    assert {i.item_id for i in reply.items} == set(group("b")) - seen("ub3")


async def test_the_hybrid_ranks_at_least_as_well_as_its_best_member(client: Client) -> None:
    catalog = await client.catalog("hybrid")
    pairs = clustered_topics()
    for start in range(0, len(pairs), 200):  # the small settings' batch limit
        await client.ingest(catalog, pairs[start : start + 200])
    await upsert(client, catalog, themed_items("".join(TOPICS)))
    configs = [
        pb.ModelConfig(algorithm=EASE, hyperparameters=pb.Hyperparameters(ease_lambda=10)),
        pb.ModelConfig(algorithm=CONTENT),
        pb.ModelConfig(
            algorithm=EASE, hyperparameters=pb.Hyperparameters(ease_lambda=10, content_weight=0.5)
        ),
    ]

    reply = await client.recommender.Evaluate(
        pb.EvaluateRequest(catalog=catalog, configs=configs, k=5), metadata=client.metadata
    )

    ease, content, hybrid = (e.metrics.ndcg for e in reply.evaluations)
    assert hybrid >= max(ease, content), (ease, content, hybrid)
    assert reply.evaluations[2].config.hyperparameters.content_weight == 0.5


def _train(content_weight: float) -> pb.StartTrainingRequest:
    hyper = pb.Hyperparameters(content_weight=content_weight)
    config = pb.ModelConfig(algorithm=EASE, hyperparameters=hyper)
    return pb.StartTrainingRequest(train=pb.TrainRequest(catalog="c", config=config))


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        (
            "Recommend",
            pb.RecommendRequest(catalog="c", user_id="u", content_weight=1.5),
            "content_weight",
        ),
        (
            "Recommend",
            pb.RecommendRequest(catalog="c", user_id="u", content_weight=-0.1),
            "content_weight",
        ),
        ("StartTraining", _train(2.0), "train.config.hyperparameters.content_weight"),
    ],
)
async def test_bad_content_weights_name_their_field(
    client: Client, method: str, request_: object, field: str
) -> None:
    call = getattr(client.recommender, method)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request_, metadata=client.metadata)
    assert (refused.value.code(), field_of(refused.value)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
    )
