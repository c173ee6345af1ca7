"""Business rules over real gRPC with a real NATS: boosts and buries move items by places, pins
put an item at its position, caps limit the results per attribute value, exclusions always
hold, time windows, rules set on one replica applied by another (Recommend and SimilarItems),
and bad rules refused naming the field."""

from __future__ import annotations

import time

import grpc
import pytest
from recommender_testing import Client, client_of, group, seen, small_settings, two_groups

from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.recommender.server import create

pytestmark = pytest.mark.timeout(120)
UNSEEN = sorted(set(group("a")) - seen("ua0"))  # a8 .. a11: EASE's top 4 for ua0


async def _catalog(client: Client, attributes: dict[str, dict[str, str]]) -> str:
    """A catalog of `two_groups` with EASE trained, and items with `attributes`."""
    catalog = await client.catalog()
    await client.ingest(catalog, two_groups())
    done = await client.train(catalog, pb.ALGORITHM_EASE)
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    items = [pb.Item(id=i, attributes=a) for i, a in attributes.items()]
    await client.recommender.UpsertItems(
        pb.UpsertItemsRequest(catalog=catalog, items=items), metadata=client.metadata
    )
    return catalog


def _match(key: str, *values: str) -> pb.AttributeFilter:
    return pb.AttributeFilter(key=key, values=values)


def _ids(reply: pb.RecommendResponse | pb.SimilarItemsResponse) -> list[str]:
    return [i.item_id for i in reply.items]


async def test_boosts_and_buries_move_matching_items_by_places(client: Client) -> None:
    catalog = await _catalog(
        client, {"b0": {"brand": "acme"}, "b1": {"brand": "acme"}, "a8": {"brand": "old"}}
    )
    await client.set_rules(
        catalog,
        pb.Rule(name="promo", boost=pb.Boost(match=_match("brand", "acme"), shift=20)),
        pb.Rule(name="stale", boost=pb.Boost(match=_match("brand", "old"), shift=-20)),
    )

    plain = await client.recommend(catalog, "ua0", count=4, ignore_rules=True)
    top = await client.recommend(catalog, "ua0", count=4)
    every = await client.recommend(catalog, "ua0", count=16)

    assert sorted(_ids(plain)) == UNSEEN
    assert set(_ids(top)[:2]) == {"b0", "b1"}  # from behind the group's items to the top
    assert set(_ids(top)[2:]) < set(UNSEEN) - {"a8"}
    for boosted in top.items[:2]:
        assert (boosted.reason.kind, boosted.reason.rule) == (pb.REASON_KIND_BOOSTED, "promo")
    assert top.items[2].reason.kind == pb.REASON_KIND_SIMILAR_TO_SEEN
    assert _ids(every)[-1] == "a8"  # buried below every item of the other group
    assert (every.items[-1].reason.kind, every.items[-1].reason.rule) == (
        pb.REASON_KIND_BURIED,
        "stale",
    )
    assert every.items[-1].reason.text.startswith("because you liked")


async def test_pins_caps_and_exclusions(client: Client) -> None:
    brands = {"a9": {"stock": "0"}, "a10": {"brand": "x"}, "a11": {"brand": "x"}}
    catalog = await _catalog(client, brands)
    await client.set_rules(
        catalog,
        pb.Rule(name="hero", pin=pb.Pin(item_id="b5", position=1)),
        pb.Rule(name="seen", pin=pb.Pin(item_id="a0", position=2)),  # ua0 has seen a0
        pb.Rule(name="one-per-brand", cap=pb.Cap(key="brand", max_items=1)),
        pb.Rule(name="sold-out", exclude=pb.Exclude(match=_match("stock", "0"))),
    )

    ruled = await client.recommend(catalog, "ua0", count=4)
    plain = await client.recommend(catalog, "ua0", count=4, ignore_rules=True)
    candidates = pb.Filters(candidate_item_ids=["a8", "a10", "a11", "a9"])
    reranked = await client.recommend(catalog, "ua0", filters=candidates)

    assert _ids(ruled)[0] == "b5"
    assert (ruled.items[0].reason.kind, ruled.items[0].reason.rule) == (
        pb.REASON_KIND_PINNED,
        "hero",
    )
    assert "a0" not in _ids(ruled)  # a pin does not bring back a seen item
    assert "a9" not in _ids(ruled)
    assert "a8" in _ids(ruled)
    assert len({"a10", "a11"} & set(_ids(ruled))) == 1  # at most one of brand x
    assert "a9" not in _ids(plain)  # exclusions hold when a request ignores rules
    assert {"a10", "a11"} <= set(_ids(plain))
    assert "b5" not in _ids(plain)
    assert sorted(_ids(reranked)) in (["a10", "a8"], ["a11", "a8"])  # b5 is no candidate


async def test_rules_apply_only_inside_their_time_window(client: Client) -> None:
    catalog = await _catalog(client, {a: {"id": a} for a in UNSEEN})
    now = int(time.time())

    def exclude(name: str, item: str, start: int | None, end: int | None) -> pb.Rule:
        rule = pb.Rule(name=name, exclude=pb.Exclude(match=_match("id", item)))
        if start is not None:
            rule.start_time.FromSeconds(start)
        if end is not None:
            rule.end_time.FromSeconds(end)
        return rule

    stored = await client.set_rules(
        catalog,
        exclude("expired", "a8", now - 7200, now - 3600),
        exclude("future", "a9", now + 3600, None),
        exclude("running", "a10", now - 3600, now + 3600),
    )
    reply = await client.recommend(catalog, "ua0", count=4)

    assert {"a8", "a9", "a11"} <= set(_ids(reply))
    assert "a10" not in _ids(reply)
    assert [r.name for r in stored.rules] == ["expired", "future", "running"]
    assert stored.rules[0].end_time.seconds == now - 3600
    assert not stored.rules[1].HasField("end_time")


async def test_rules_set_on_one_replica_hold_on_another(
    client: Client, start_service: StartService, key: str
) -> None:
    catalog = await _catalog(client, {"b6": {"stock": "0"}})
    second = await start_service(create, small_settings())
    hero = pb.Rule(name="hero", pin=pb.Pin(item_id="b5", position=1))
    sold_out = pb.Rule(name="sold-out", exclude=pb.Exclude(match=_match("stock", "0")))

    await client.set_rules(catalog, hero, sold_out)

    async with client_of(second, key) as other:
        got = await other.recommender.GetRules(
            pb.GetRulesRequest(catalog=catalog), metadata=other.metadata
        )
        assert list(got.rules) == [hero, sold_out]

        async def applied() -> bool:
            top = await other.recommend(catalog, "ua0", count=4)
            return _ids(top)[0] == "b5"

        await eventually(applied, timeout_s=10)
        similar = await other.recommender.SimilarItems(
            pb.SimilarItemsRequest(catalog=catalog, item_id="b2", count=11),
            metadata=other.metadata,
        )
    third = await start_service(create, small_settings())  # loads the rules as it starts
    async with client_of(third, key) as late:
        first = await late.recommend(catalog, "ua0", count=4)
    assert _ids(first)[0] == "b5"
    assert _ids(similar)[0] == "b5"
    assert similar.items[0].reason.kind == pb.REASON_KIND_PINNED
    assert "b6" not in _ids(similar)
    assert "b2" not in _ids(similar)


def _boost(shift: int = 1, key: str = "k", *values: str) -> pb.Boost:
    return pb.Boost(match=_match(key, *(values or ("v",))), shift=shift)


def _window(start: int, end: int) -> pb.Rule:
    rule = pb.Rule(name="w", boost=_boost())
    rule.start_time.FromSeconds(start)
    rule.end_time.FromSeconds(end)
    return rule


@pytest.mark.parametrize(
    ("rules", "code", "where"),
    [
        ([pb.Rule(name="r", boost=_boost(0))], "INVALID_ARGUMENT", "rules[0].boost.shift"),
        ([pb.Rule(name="r", boost=_boost(1001))], "INVALID_ARGUMENT", "rules[0].boost.shift"),
        ([pb.Rule(name="r")], "INVALID_ARGUMENT", "rules[0].effect"),
        ([pb.Rule(name="bad name", boost=_boost())], "INVALID_ARGUMENT", "rules[0].name"),
        (
            [pb.Rule(name="r", boost=_boost()), pb.Rule(name="r", boost=_boost())],
            "INVALID_ARGUMENT",
            "rules[1].name",
        ),
        ([_window(2_000, 1_000)], "INVALID_ARGUMENT", "rules[0].end_time"),
        (
            [pb.Rule(name="r", pin=pb.Pin(item_id="i", position=0))],
            "INVALID_ARGUMENT",
            "rules[0].pin.position",
        ),
        ([pb.Rule(name="r", cap=pb.Cap(key="k"))], "INVALID_ARGUMENT", "rules[0].cap.max_items"),
        (
            [pb.Rule(name="r", exclude=pb.Exclude(match=_match("k", "v" * 17)))],
            "INVALID_ARGUMENT",
            "rules[0].exclude.match.values",
        ),
        (
            [pb.Rule(name="r", exclude=pb.Exclude())],
            "INVALID_ARGUMENT",
            "rules[0].exclude.match",
        ),
        (
            [pb.Rule(name=f"r{i}", boost=_boost()) for i in range(6)],
            "RESOURCE_EXHAUSTED",
            "rules",
        ),
    ],
)
async def test_bad_rules_are_refused_naming_the_field(
    client: Client, rules: list[pb.Rule], code: str, where: str
) -> None:
    catalog = await client.catalog()
    kept = pb.Rule(name="kept", boost=_boost())
    await client.set_rules(catalog, kept)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.set_rules(catalog, *rules)

    assert caught.value.code() == getattr(grpc.StatusCode, code)
    assert where in (caught.value.details() or "")
    got = await client.recommender.GetRules(
        pb.GetRulesRequest(catalog=catalog), metadata=client.metadata
    )
    assert list(got.rules) == [kept]  # nothing of a refused set stored
