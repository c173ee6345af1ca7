"""The recommender service over real gRPC with a real NATS: training as an operation, the
structure of the data followed, fold-in seen on a second replica, filters and exclusions, cold
start, events from producers, evaluation, and clear errors for bad input."""

from __future__ import annotations

import math

import grpc
import pytest
from nats.aio.client import Client as Nats
from recommender_testing import Client, client_of, group, seen, small_settings, two_groups

from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.recommender.v1 import events_pb2
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.events import EventBus
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.recommender.engine import STREAM, TRAINED
from nexus.recommender.feed import subject
from nexus.recommender.server import create

pytestmark = pytest.mark.timeout(120)
ALS, BPR, EASE, POP = (
    pb.ALGORITHM_ALS,
    pb.ALGORITHM_BPR,
    pb.ALGORITHM_EASE,
    pb.ALGORITHM_POPULARITY,
)


async def _trained(client: Client, algorithm: int = ALS, **hyper: float) -> str:
    catalog = await client.catalog()
    await client.ingest(catalog, two_groups())
    done = await client.train(catalog, algorithm, **hyper)
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    return catalog


@pytest.mark.parametrize("algorithm", [ALS, EASE])
async def test_recommendations_follow_the_groups_and_leave_seen_items_out(
    client: Client, nats_client: Nats, algorithm: int
) -> None:
    catalog = await _trained(client, algorithm, factors=8, iterations=20, regularization=0.1)

    reply = await client.recommend(catalog, "ua0", count=4)

    items = [i.item_id for i in reply.items]
    assert set(items) == set(group("a")) - seen("ua0")  # the group's four unseen items
    assert (reply.model.name, reply.model.version, reply.model.alias) == (
        catalog,
        "1",
        "production",
    )
    for item in reply.items:
        assert item.reason.kind == pb.REASON_KIND_SIMILAR_TO_SEEN
        assert item.reason.item_id in seen("ua0")
        assert item.reason.text == f"because you liked {item.reason.item_id}"
    last = await nats_client.jetstream().get_last_msg(STREAM.name, TRAINED)
    event = events_pb2.TrainingCompleted.FromString(last.data or b"")
    assert (event.catalog, event.interactions) == (catalog, len(two_groups()))


async def test_training_reports_progress_and_registers_what_it_trained_on(client: Client) -> None:
    catalog = await client.catalog()
    await client.ingest(catalog, two_groups())

    done = await client.train(catalog, BPR, factors=8, iterations=5)

    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    assert done.progress.metrics["steps_done"] == 5.0
    result = pb.TrainResponse()
    assert done.response.Unpack(result)
    version = result.version
    assert (version.name, version.version) == (catalog, "1")
    assert version.metrics["users"] == 2 * 12
    assert version.metrics["interactions"] == len(two_groups())
    assert version.parameters["algorithm"] == "bpr"


FACTORS = {"factors": 8, "iterations": 20, "regularization": 0.1}
BPR_FIT = {"factors": 8, "iterations": 200, "learning_rate": 0.05}


@pytest.mark.parametrize(("algorithm", "hyper"), [(ALS, FACTORS), (BPR, BPR_FIT), (EASE, {})])
async def test_a_few_new_interactions_move_a_users_recommendations_on_another_replica(
    client: Client, start_service: StartService, key: str, algorithm: int, hyper: dict[str, float]
) -> None:
    catalog = await _trained(client, algorithm, **hyper)
    second = await start_service(create, small_settings())
    before = await client.recommend(catalog, "ua0", count=4)
    assert {i.item_id for i in before.items} <= set(group("a"))

    await client.ingest(catalog, [("ua0", b) for b in group("b")[:8]], weight=3.0)

    async with client_of(second, key) as other:

        async def moved() -> bool:  # the second replica follows the stream on its own
            after = await other.recommend(catalog, "ua0", count=4)
            assert after.model.version == "1"  # the same version, no retraining
            items = [i.item_id for i in after.items]
            assert not set(items) & set(group("b")[:8])  # the new ones are seen: left out
            return sum(item in group("b") for item in items) >= 2  # none before

        await eventually(moved, timeout_s=10)


async def test_filters_exclusions_and_seen_items(client: Client) -> None:
    catalog = await _trained(client, EASE)
    items = [pb.Item(id=a, attributes={"parity": str(int(a[1:]) % 2)}) for a in group("a")]
    await client.recommender.UpsertItems(
        pb.UpsertItemsRequest(catalog=catalog, items=items), metadata=client.metadata
    )
    unseen = set(group("a")) - seen("ua0")  # a8 .. a11

    even = await client.recommend(
        catalog,
        "ua0",
        count=20,
        filters=pb.Filters(
            attributes=[pb.AttributeFilter(key="parity", values=["0"])],
            exclude_item_ids=["a10"],
        ),
    )
    everything = await client.recommend(catalog, "ua0", count=24, include_seen=True)

    assert {i.item_id for i in even.items} == {a for a in unseen if int(a[1:]) % 2 == 0} - {"a10"}
    assert seen("ua0") <= {i.item_id for i in everything.items}


async def test_a_candidate_list_is_reranked_and_diversity_mixes_interests(client: Client) -> None:
    catalog = await _trained(client, EASE)
    await client.ingest(
        catalog, [("mix", a) for a in group("a")[:8]] + [("mix", "b0"), ("mix", "b1")]
    )
    candidates = pb.Filters(candidate_item_ids=["b5", "a9", "a0", "zz"])

    reranked = await client.recommend(catalog, "ua0", filters=candidates)
    plain = await client.recommend(catalog, "mix", count=2)
    diverse = await client.recommend(catalog, "mix", count=2, diversity=0.9)

    assert [i.item_id for i in reranked.items] == ["a9", "b5"]  # a0 is seen, zz unknown
    assert all(i.item_id in group("a") for i in plain.items)
    assert [i.item_id in group("a") for i in diverse.items] == [True, False]
    assert diverse.items[0].item_id == plain.items[0].item_id


async def test_a_user_with_no_history_gets_popular_items(client: Client) -> None:
    catalog = await client.catalog()
    await client.ingest(catalog, [*two_groups(), *[(f"x{u}", "b3") for u in range(5)]])

    live = await client.recommend(catalog, "newcomer", count=1)  # no model yet: counted live
    done = await client.train(catalog, ALS, factors=4, iterations=2)
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED
    trained = await client.recommend(catalog, "newcomer", count=1)

    for reply, version in ((live, ""), (trained, "1")):
        assert [i.item_id for i in reply.items] == ["b3"]
        assert reply.items[0].reason.kind == pb.REASON_KIND_POPULAR
        assert reply.model.version == version


async def test_similar_items_come_from_the_same_group(client: Client) -> None:
    catalog = await _trained(client, EASE)

    reply = await client.recommender.SimilarItems(
        pb.SimilarItemsRequest(catalog=catalog, item_id="b2", count=5), metadata=client.metadata
    )

    assert {i.item_id for i in reply.items} <= set(group("b")) - {"b2"}
    assert reply.items[0].reason.kind == pb.REASON_KIND_SIMILAR_TO_ITEM
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.recommender.SimilarItems(
            pb.SimilarItemsRequest(catalog=catalog, item_id="nope"), metadata=client.metadata
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_new_item_with_text_gets_neighbours_by_content(client: Client) -> None:
    catalog = await _trained(client, EASE)
    films = [
        pb.Item(id="a0", text="a heist thriller in los angeles", attributes={"genre": "crime"}),
        pb.Item(id="a1", text="bank robbery crew thriller", attributes={"genre": "crime"}),
        pb.Item(id="b0", text="a romantic comedy in paris", attributes={"genre": "comedy"}),
        pb.Item(id="new", text="a thriller about a bank heist", attributes={"genre": "crime"}),
    ]
    await client.recommender.UpsertItems(
        pb.UpsertItemsRequest(catalog=catalog, items=films), metadata=client.metadata
    )

    reply = await client.recommender.SimilarItems(
        pb.SimilarItemsRequest(catalog=catalog, item_id="new", count=5), metadata=client.metadata
    )

    assert {i.item_id for i in reply.items} == {"a0", "a1"}  # b0 shares no word
    assert reply.items[0].reason.kind == pb.REASON_KIND_SIMILAR_TO_ITEM
    assert reply.model.version == ""  # no trained model knows "new"


async def test_interactions_published_by_a_producer_count(
    client: Client, nats_client: Nats
) -> None:
    catalog = await _trained(client, ALS, factors=8, iterations=20, regularization=0.1)
    batch = pb.InteractionBatch(
        interactions=[pb.Interaction(user_id="ua1", item_id=b, weight=3) for b in group("b")[:8]]
    )

    await EventBus(nats_client, "test/producer").publish(subject(catalog), batch)

    described = await client.recommender.GetCatalog(  # answers once the replica applied it
        pb.GetCatalogRequest(name=catalog), metadata=client.metadata
    )
    reply = await client.recommend(catalog, "ua1", count=4)
    assert described.catalog.interactions == len(two_groups()) + 8
    assert sum(i.item_id in group("b") for i in reply.items) >= 2


async def test_evaluation_ranks_a_real_model_above_popularity(client: Client) -> None:
    catalog = await client.catalog()
    await client.ingest(catalog, two_groups())
    configs = [pb.ModelConfig(algorithm=EASE), pb.ModelConfig(algorithm=POP)]

    reply = await client.recommender.Evaluate(
        pb.EvaluateRequest(catalog=catalog, configs=configs, k=6), metadata=client.metadata
    )

    ease, popularity = (e.metrics for e in reply.evaluations)
    assert (reply.k, reply.users) == (6, 24)
    assert (reply.train_interactions, reply.test_interactions) == (24 * 6, 24 * 2)
    assert ease.recall == 1.0  # both held-out items of every user are in the group's six
    assert ease.ndcg > popularity.ndcg
    assert reply.evaluations[0].config.hyperparameters.ease_lambda == 250.0


def _interactions(n: int, weight: float = 1.0) -> list[pb.Interaction]:
    return [pb.Interaction(user_id="u", item_id=f"i{k}", weight=weight) for k in range(n)]


@pytest.mark.parametrize(
    ("interactions", "code", "where"),
    [
        (_interactions(201), grpc.StatusCode.RESOURCE_EXHAUSTED, "interactions"),
        (_interactions(1, -1.0), grpc.StatusCode.INVALID_ARGUMENT, "interactions[0].weight"),
        (_interactions(1, math.nan), grpc.StatusCode.INVALID_ARGUMENT, "interactions[0].weight"),
        (_interactions(1, math.inf), grpc.StatusCode.INVALID_ARGUMENT, "interactions[0].weight"),
        (_interactions(1, 101.0), grpc.StatusCode.INVALID_ARGUMENT, "interactions[0].weight"),
        ([pb.Interaction(user_id="u")], grpc.StatusCode.INVALID_ARGUMENT, "item_id"),
    ],
)
async def test_bad_batches_are_refused_whole(
    client: Client, interactions: list[pb.Interaction], code: grpc.StatusCode, where: str
) -> None:
    catalog = await client.catalog()
    request = pb.IngestInteractionsRequest(catalog=catalog, interactions=interactions)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.recommender.IngestInteractions(request, metadata=client.metadata)

    assert caught.value.code() == code
    assert where in (caught.value.details() or "")
    described = await client.recommender.GetCatalog(
        pb.GetCatalogRequest(name=catalog), metadata=client.metadata
    )
    assert described.catalog.interactions == 0  # nothing of it stored


async def test_unknown_catalogs_are_not_found_and_names_are_unique(client: Client) -> None:
    md, api = client.metadata, client.recommender
    calls = [
        api.Recommend(pb.RecommendRequest(catalog="nope", user_id="u"), metadata=md),
        api.IngestInteractions(
            pb.IngestInteractionsRequest(catalog="nope", interactions=_interactions(1)), metadata=md
        ),
        api.StartTraining(
            pb.StartTrainingRequest(train=pb.TrainRequest(catalog="nope")), metadata=md
        ),
        api.GetCatalog(pb.GetCatalogRequest(name="nope"), metadata=md),
        api.SetRules(pb.SetRulesRequest(catalog="nope"), metadata=md),
        api.GetRules(pb.GetRulesRequest(catalog="nope"), metadata=md),
        api.UpsertUsers(
            pb.UpsertUsersRequest(catalog="nope", users=[pb.User(id="u")]), metadata=md
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in (caught.value.details() or "")
    catalog = await client.catalog()
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await client.recommender.CreateCatalog(
            pb.CreateCatalogRequest(catalog=pb.Catalog(name=catalog)), metadata=client.metadata
        )
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_too_many_results_and_untrained_catalogs_are_clear(client: Client) -> None:
    catalog = await client.catalog()

    with pytest.raises(grpc.aio.AioRpcError) as many:
        await client.recommend(catalog, "u", count=51)
    done = await client.train(catalog, ALS)

    assert many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert done.state == ops_pb.OPERATION_STATE_FAILED
    assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "no interactions" in done.error.message


def _item(attributes: int = 1, value: str = "v") -> pb.Item:
    return pb.Item(id="i", attributes={f"k{n}": value for n in range(attributes)})


def _user(attributes: int = 1, value: str = "v") -> pb.User:
    return pb.User(id="u", attributes={f"k{n}": value for n in range(attributes)})


@pytest.mark.parametrize(
    ("records", "code", "where"),
    [
        ([_item()] * 21, grpc.StatusCode.RESOURCE_EXHAUSTED, "items"),
        ([_item(4)], grpc.StatusCode.RESOURCE_EXHAUSTED, "items[0].attributes"),
        ([_item(1, "x" * 17)], grpc.StatusCode.INVALID_ARGUMENT, "items[0].attributes"),
        ([_user()] * 21, grpc.StatusCode.RESOURCE_EXHAUSTED, "users"),
        ([_user(4)], grpc.StatusCode.RESOURCE_EXHAUSTED, "users[0].attributes"),
        ([_user(1, "x" * 17)], grpc.StatusCode.INVALID_ARGUMENT, "users[0].attributes"),
        ([pb.User(attributes={"k": "v"})], grpc.StatusCode.INVALID_ARGUMENT, "users[0].id"),
    ],
)
async def test_oversized_items_and_users_are_refused(
    client: Client, records: list[pb.Item] | list[pb.User], code: grpc.StatusCode, where: str
) -> None:
    catalog = await client.catalog()
    api = client.recommender
    if isinstance(records[0], pb.Item):
        call = api.UpsertItems(
            pb.UpsertItemsRequest(catalog=catalog, items=records), metadata=client.metadata
        )
    else:
        call = api.UpsertUsers(
            pb.UpsertUsersRequest(catalog=catalog, users=records), metadata=client.metadata
        )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call

    assert caught.value.code() == code
    assert where in (caught.value.details() or "")


async def test_evaluations_and_ease_have_limits(
    client: Client, start_service: StartService, key: str
) -> None:
    catalog = await client.catalog()
    many = [(f"u{u}", f"i{i}") for u in range(26) for i in range(20)]  # 520 interactions
    await client.ingest(catalog, many[:200])
    await client.ingest(catalog, many[200:400])
    await client.ingest(catalog, many[400:])
    evaluate = pb.EvaluateRequest(catalog=catalog, configs=[pb.ModelConfig(algorithm=POP)])
    limits = {"max_ease_items": 10, "max_evaluate_interactions": 10_000}
    narrow = await start_service(create, small_settings().model_copy(update=limits))
    ease = pb.EvaluateRequest(catalog=catalog, configs=[pb.ModelConfig(algorithm=EASE)])

    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await client.recommender.Evaluate(evaluate, metadata=client.metadata)
    async with client_of(narrow, key) as other:  # Evaluate runs where it is called
        with pytest.raises(grpc.aio.AioRpcError) as too_wide:
            await other.recommender.Evaluate(ease, metadata=other.metadata)
    duplicated = pb.Filters(attributes=[pb.AttributeFilter(key="k", values=["1"])] * 2)
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await client.recommend(catalog, "u0", filters=duplicated)

    assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "520" in (too_many.value.details() or "")
    assert too_wide.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "EASE over 20 items" in (too_wide.value.details() or "")
    assert twice.value.code() == grpc.StatusCode.INVALID_ARGUMENT
