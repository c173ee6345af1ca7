"""Helpers for recommender tests: interactions with a known structure, requests, stubs."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc

from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.operations.v1 import operations_pb2_grpc as ops_grpc
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.api.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.recommender.settings import RecommenderSettings

GROUP_SIZE = 12
"""Users per group and items per group."""


class Client:
    """Stubs on one channel, sending an API key with every call."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.recommender = pb_grpc.RecommenderServiceStub(channel)
        self.models = models_grpc.ModelRegistryServiceStub(channel)
        self.operations = ops_grpc.OperationsServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()

    async def catalog(self, prefix: str = "cat") -> str:
        """A new catalog that no other test uses (the session NATS is shared)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        request = pb.CreateCatalogRequest(catalog=pb.Catalog(name=name))
        await self.recommender.CreateCatalog(request, metadata=self.metadata)
        return name

    async def ingest(self, catalog: str, pairs: list[tuple[str, str]], weight: float = 1.0) -> None:
        """Records (user, item) interactions of one weight."""
        interactions = [
            pb.Interaction(user_id=u, item_id=i, type="view", weight=weight) for u, i in pairs
        ]
        request = pb.IngestInteractionsRequest(catalog=catalog, interactions=interactions)
        await self.recommender.IngestInteractions(request, metadata=self.metadata)

    async def train(self, catalog: str, algorithm: int, **hyper: float) -> ops_pb.Operation:
        """Trains and promotes a model; the finished operation."""
        config = pb.ModelConfig(algorithm=algorithm, hyperparameters=pb.Hyperparameters(**hyper))
        train = pb.TrainRequest(catalog=catalog, config=config, promote_to="production")
        started = await self.recommender.StartTraining(
            pb.StartTrainingRequest(train=train), metadata=self.metadata
        )
        watch = self.operations.WatchOperation(
            ops_pb.WatchOperationRequest(name=started.operation.name), metadata=self.metadata
        )
        return [reply.operation async for reply in watch][-1]

    async def set_rules(self, catalog: str, *rules: pb.Rule) -> pb.SetRulesResponse:
        """Replaces a catalog's business rules."""
        request = pb.SetRulesRequest(catalog=catalog, rules=rules)
        return await self.recommender.SetRules(request, metadata=self.metadata)

    async def recommend(self, catalog: str, user: str, **fields: object) -> pb.RecommendResponse:
        """Recommend for a user."""
        request = pb.RecommendRequest(catalog=catalog, user_id=user, **fields)  # type: ignore[arg-type]
        return await self.recommender.Recommend(request, metadata=self.metadata)


def group(name: str) -> list[str]:
    """The items of a group: "a0", "a1", ..."""
    return [f"{name}{i}" for i in range(GROUP_SIZE)]


def two_groups() -> list[tuple[str, str]]:
    """Users "ua<i>" interact only with items "a*", users "ub<i>" only with "b*": each with the
    items of their group at offsets i .. i+7 (cyclically), so every item is seen by eight
    users and each user misses four items of their group."""
    pairs = []
    for name in ("a", "b"):
        items = group(name)
        for u in range(GROUP_SIZE):
            pairs += [(f"u{name}{u}", items[(u + j) % GROUP_SIZE]) for j in range(8)]
    return pairs


def seen(user: str) -> set[str]:
    """The items `two_groups` gives a user."""
    return {i for u, i in two_groups() if u == user}


def small_settings() -> RecommenderSettings:
    """Small limits, so that the tests can cross them."""
    return RecommenderSettings(
        grpc_port=0,
        max_batch_interactions=200,
        max_batch_items=20,
        max_item_attributes=3,
        max_attribute_chars=16,
        max_results=50,
        max_rules=5,
        max_weight=100,
        max_evaluate_interactions=500,
    )


@contextlib.asynccontextmanager
async def client_of(host: ServiceHost, key: str) -> AsyncIterator[Client]:
    """A client of one replica."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield Client(channel, key)


TOPICS = {
    "a": ("space", "a science fiction film about astronauts, rockets and a distant planet"),
    "b": ("cooking", "a cookbook of italian pasta recipes, sauces and baking bread"),
    "c": ("football", "a documentary about a football club, its players and the league"),
}
"""Each item group's theme: its genre attribute and a sentence about it."""


def themed_items(names: str = "ab") -> list[pb.Item]:
    """The items of `group(name)` for each name, with their theme's text and genre and a
    title ("a3" is "space 3")."""
    return [
        pb.Item(
            id=item,
            text=f"{TOPICS[name][1]} (part {k})",
            attributes={"genre": TOPICS[name][0], "title": f"{TOPICS[name][0]} {k}"},
        )
        for name in names
        for k, item in enumerate(group(name))
    ]


async def upsert(client: Client, catalog: str, items: list[pb.Item], batch: int = 20) -> None:
    """Stores items in batches the small settings accept."""
    for start in range(0, len(items), batch):
        request = pb.UpsertItemsRequest(catalog=catalog, items=items[start : start + batch])
        await client.recommender.UpsertItems(request, metadata=client.metadata)


def clustered_topics(seed: int = 7) -> list[tuple[str, str]]:
    """Three themed groups, each in two halves ("a0"-"a5", "a6"-"a11") that the text cannot
    tell apart; twelve users per half ("ua0"...), each with four items of their half drawn at
    random and one item of another group (noise). Content finds the group, interactions the
    half."""
    import random

    rng = random.Random(seed)
    pairs = []
    for name in TOPICS:
        others = [i for other in TOPICS if other != name for i in group(other)]
        for half in range(2):
            items = group(name)[half * 6 : half * 6 + 6]
            for u in range(12):
                user = f"u{name}{half * 12 + u}"
                chosen = [*rng.sample(items, 4), rng.choice(others)]
                pairs += [(user, item) for item in chosen]
    return pairs
