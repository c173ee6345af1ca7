"""Users with attributes over real gRPC with a real NATS: a user with no history gets the items
popular in their segment (the users who share their attributes) before the catalog's popular
items, with or without a trained model (bad users: test_service.py, beside bad items)."""

from __future__ import annotations

import pytest
from recommender_testing import Client, client_of, small_settings

from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.recommender.server import create

pytestmark = pytest.mark.timeout(120)
D_ITEMS, F_ITEMS = ["d0", "d1", "d2"], ["f0", "f1", "f2", "f3"]


def _segments() -> tuple[list[tuple[str, str]], list[pb.User]]:
    """Six users in Germany with the d items, ten in France with the f items: the f items
    are the catalog's most popular."""
    pairs = [(f"de{u}", i) for u in range(6) for i in D_ITEMS]
    pairs += [(f"fr{u}", i) for u in range(10) for i in F_ITEMS]
    users = [pb.User(id=f"de{u}", attributes={"country": "DE", "age": "30"}) for u in range(6)]
    users += [pb.User(id=f"fr{u}", attributes={"country": "FR", "age": "30"}) for u in range(10)]
    return pairs, users


@pytest.mark.parametrize("algorithm", [None, pb.ALGORITHM_EASE])
async def test_a_new_user_gets_what_is_popular_in_their_segment(
    client: Client, algorithm: int | None
) -> None:
    catalog = await client.catalog()
    pairs, users = _segments()
    await client.ingest(catalog, pairs)
    newcomers = [
        pb.User(id="new-de", attributes={"country": "DE"}),
        pb.User(id="nowhere", attributes={"country": "IT"}),
    ]
    upserted = await client.recommender.UpsertUsers(
        pb.UpsertUsersRequest(catalog=catalog, users=users[:10]), metadata=client.metadata
    )
    await client.recommender.UpsertUsers(
        pb.UpsertUsersRequest(catalog=catalog, users=users[10:] + newcomers),
        metadata=client.metadata,
    )
    if algorithm is not None:
        done = await client.train(catalog, algorithm)
        assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error

    german = await client.recommend(catalog, "new-de", count=5)
    italian = await client.recommend(catalog, "nowhere", count=3)  # a segment with no history
    anonymous = await client.recommend(catalog, "no-attributes", count=3)

    assert upserted.upserted == 10
    assert sorted(i.item_id for i in german.items[:3]) == D_ITEMS  # not the global f items
    assert {i.reason.kind for i in german.items[:3]} == {pb.REASON_KIND_SEGMENT_POPULAR}
    assert german.items[0].reason.text == "popular with people like you"
    assert {i.item_id for i in german.items[3:]} <= set(F_ITEMS)  # then the catalog's
    assert {i.reason.kind for i in german.items[3:]} == {pb.REASON_KIND_POPULAR}
    for reply in (italian, anonymous):
        assert {i.item_id for i in reply.items} <= set(F_ITEMS)
        assert {i.reason.kind for i in reply.items} == {pb.REASON_KIND_POPULAR}
    assert german.model.version == ("" if algorithm is None else "1")


async def test_users_stored_on_one_replica_count_on_another(
    client: Client, start_service: StartService, key: str
) -> None:
    catalog = await client.catalog()
    pairs, users = _segments()
    await client.ingest(catalog, pairs)
    second = await start_service(create, small_settings())
    newcomer = pb.User(id="new-de", attributes={"country": "DE"})

    await client.recommender.UpsertUsers(
        pb.UpsertUsersRequest(catalog=catalog, users=users[:10]), metadata=client.metadata
    )
    await client.recommender.UpsertUsers(
        pb.UpsertUsersRequest(catalog=catalog, users=[*users[10:], newcomer]),
        metadata=client.metadata,
    )

    async with client_of(second, key) as other:

        async def segmented() -> bool:  # the second replica follows the users' bucket
            reply = await other.recommend(catalog, "new-de", count=3)
            return sorted(i.item_id for i in reply.items) == D_ITEMS

        await eventually(segmented, timeout_s=10)
