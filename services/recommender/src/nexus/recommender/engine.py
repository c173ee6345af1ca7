"""The recommender's work, free of gRPC: catalogs, items, interactions, recommendations,
training (as an operation) and evaluation.

Model work (training, evaluation, scoring) runs on the service's executor, never on the event
loop. A catalog's models are the versions of the registry model named after it; the model
runtime serves them (aliases, A/B splits, reloads on every replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

from nexus.api.common.v1 import common_pb2
from nexus.api.recommender.v1 import events_pb2
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.caching import TTLCache
from nexus.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NexusError,
    NotFound,
    ResourceExhausted,
)
from nexus.common.events import DAY_S, MIB, EventBus, Stream
from nexus.common.operations import NO_PROGRESS, Progress
from nexus.common.registry import ModelRegistry, ModelVersionInfo, Resolved, Selector
from nexus.common.runtime import ModelRuntime
from nexus.common.sentence_embeddings import load_local_model
from nexus.recommender import wire
from nexus.recommender.feed import InteractionFeed
from nexus.recommender.recommending import (
    Algorithm,
    Allowed,
    Config,
    ContentIndex,
    Embedded,
    Exclude,
    Fitter,
    Interaction,
    ItemQuery,
    Ranked,
    Report,
    Rule,
    RuleSet,
    Snapshot,
    UserQuery,
    embedding_text,
    evaluate,
    item_text,
    popular,
    segment_of,
)
from nexus.recommender.rules_check import check_rules
from nexus.recommender.serving import FRAMEWORK, ServedModel
from nexus.recommender.settings import RecommenderSettings
from nexus.recommender.stores import (
    CatalogInfo,
    CatalogRules,
    CatalogStore,
    ItemRecord,
    ItemStore,
    PerCatalog,
    R,
    RuleStore,
    UserRecord,
    UserStore,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
STREAM = Stream("RECOMMENDER", ("nexus.recommender.>",), max_age_s=7 * DAY_S, max_bytes=256 * MIB)
TRAINED = "nexus.recommender.trained"
DEFAULT_COUNT = 10
SEGMENT_TTL_S = 1.0
"""Longest a segment's popular items are served after its users' interactions changed."""


@dataclass(frozen=True)
class Filters:
    """Which items may be returned: every (attribute, accepted values) must hold; never
    `exclude`; only `candidates` when there are any."""

    attributes: tuple[tuple[str, frozenset[str]], ...] = ()
    exclude: frozenset[str] = frozenset()
    candidates: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RecommendSpec:
    """A Recommend call."""

    catalog: str
    user: str
    count: int = 0
    include_seen: bool = False
    filters: Filters = field(default_factory=Filters)
    selector: Selector = field(default_factory=Selector)
    diversity: float = 0.0
    content_weight: float | None = None
    ignore_rules: bool = False


@dataclass(frozen=True)
class SimilarSpec:
    """A SimilarItems call."""

    catalog: str
    item: str
    count: int = 0
    filters: Filters = field(default_factory=Filters)
    selector: Selector = field(default_factory=Selector)
    ignore_rules: bool = False


@dataclass(frozen=True)
class TrainSpec:
    """A training: the catalog (also the model's name), what to train, an alias to promote."""

    catalog: str
    config: Config
    promote_to: str = ""
    description: str = ""


@dataclass(frozen=True)
class EvaluateSpec:
    """An Evaluate call."""

    catalog: str
    configs: tuple[Config, ...]
    k: int = 10
    test_fraction: float = 0.25
    seed: int = 42


@dataclass(frozen=True)
class CatalogView:
    """A catalog and what this replica's log holds of it."""

    info: CatalogInfo
    users: int
    items: int
    interactions: int
    item_records: int


@dataclass(frozen=True)
class Recommended:
    """Items, best first, each with the title of the item behind it; the version that served
    (None: no trained model yet, popular items counted live)."""

    items: list[tuple[Ranked, str]]
    model: Resolved | None


class RecommenderEngine:
    """Catalogs, items, interactions, recommendations, training and evaluation over the stores,
    the interactions feed, the registry, the model runtime and the service's executor."""

    def __init__(
        self,
        registry: ModelRegistry,
        bus: EventBus,
        settings: RecommenderSettings,
        executor: Executor,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._bus = bus
        self._executor = executor
        self.catalogs = CatalogStore(bus.nc)
        self.items = ItemStore(bus.nc)
        self.users = UserStore(bus.nc)
        self.rules = RuleStore(bus.nc)
        self._segments: TTLCache[tuple[str, frozenset[tuple[str, str]], int], dict[str, int]]
        self._segments = TTLCache("recommender_segments", maxsize=1024, ttl_s=SEGMENT_TTL_S)
        self.feed = InteractionFeed(bus, settings, self._decode)
        self.models = ModelRuntime(
            registry,
            ServedModel,
            executor=executor,
            max_models=settings.model_cache_size,
            max_bytes=settings.model_cache_bytes,
            frameworks=[FRAMEWORK],
        )
        self._content: dict[str, tuple[int, ContentIndex]] = {}
        self._embedded: dict[str, tuple[int, Embedded, dict[str, str]]] = {}
        self._embedding: dict[str, asyncio.Lock] = {}  # one embedding of a catalog at a time

    async def start(self) -> None:
        """Loads catalogs, items, users and rules, replays the interactions, follows the
        registry."""
        await self._bus.ensure_streams(STREAM)
        for part in (self.catalogs, self.items, self.users, self.rules, self.feed, self.models):
            await part.start()

    async def warm(self) -> None:
        """Loads the versions the aliases route to (before SERVING)."""
        await self.models.warm()

    async def stop(self) -> None:
        """Stops following and lets go of the models."""
        for part in (self.models, self.feed, self.rules, self.users, self.items, self.catalogs):
            await part.stop()

    # Catalogs and data.

    async def create_catalog(self, info: CatalogInfo) -> CatalogInfo:
        """Stores a new catalog (AlreadyExists when the name is taken)."""
        return await self.catalogs.create(info)

    async def get_catalog(self, name: str) -> CatalogView:
        """A catalog with its counts, once every interaction stored before was applied."""
        info = await self.catalogs.get(name)
        await self.feed.sync(name)
        log_ = self.feed.log(name)
        items = len(self.items.of(name))
        return CatalogView(info, log_.users, log_.items, log_.interactions, items)

    async def list_catalogs(self) -> list[CatalogInfo]:
        """Every catalog, by name."""
        return await self.catalogs.all()

    def check_interactions(self, count: int) -> None:
        """Raises ResourceExhausted for a batch over the limit."""
        if count > self.settings.max_batch_interactions:
            raise ResourceExhausted.too_large(
                "interactions", count, self.settings.max_batch_interactions
            )

    async def ingest(self, catalog: str, interactions: Sequence[Interaction]) -> int:
        """Stores a batch; every replica's logs apply it, this one before this returns.

        Raises:
            NotFound: No such catalog.
            ResourceExhausted: A batch over the limit.
        """
        self.check_interactions(len(interactions))
        await self.catalogs.get(catalog)
        await self.feed.publish(catalog, interactions)
        return len(interactions)

    async def upsert_items(self, catalog: str, items: Sequence[ItemRecord]) -> int:
        """Creates or replaces items (NotFound: no such catalog; ResourceExhausted or
        InvalidArgument: too many items or attributes, or too long ones)."""
        return await self._upsert(self.items, "items", catalog, items)

    async def upsert_users(self, catalog: str, users: Sequence[UserRecord]) -> int:
        """Creates or replaces users' attributes (errors as `upsert_items`)."""
        return await self._upsert(self.users, "users", catalog, users)

    async def _upsert(
        self, store: PerCatalog[R], what: str, catalog: str, records: Sequence[R]
    ) -> int:
        self._check_records(what, [record.attributes for record in records])
        await self.catalogs.get(catalog)
        for record in records:
            await store.put(record)
        return len(records)

    def _check_records(self, what: str, attributes: Sequence[Mapping[str, str]]) -> None:
        s = self.settings
        if len(attributes) > s.max_batch_items:
            raise ResourceExhausted.too_large(what, len(attributes), s.max_batch_items)
        for i, given in enumerate(attributes):
            if len(given) > s.max_item_attributes:
                where = f"{what}[{i}].attributes"
                raise ResourceExhausted.too_large(where, len(given), s.max_item_attributes)
            for key, value in given.items():
                if not key or max(len(key), len(value)) > s.max_attribute_chars:
                    raise _bad_attribute(f"{what}[{i}]", key, s.max_attribute_chars)

    async def set_rules(self, catalog: str, rules: Sequence[Rule]) -> CatalogRules:
        """Replaces a catalog's business rules; every replica applies them within milliseconds,
        this one before this returns.

        Raises:
            NotFound: No such catalog.
            InvalidArgument: A rule that cannot hold (naming `rules[i].field`).
            ResourceExhausted: More rules than allowed, or too large to store.
        """
        check_rules(rules, self.settings.max_rules, self.settings.max_attribute_chars)
        await self.catalogs.get(catalog)
        stored = CatalogRules(catalog, RuleSet(tuple(rules)), datetime.now(UTC))
        if len(stored.encode()) > MIB:
            raise ResourceExhausted.too_large("rules (bytes stored)", len(stored.encode()), MIB)
        await self.rules.put(stored)
        return stored

    async def get_rules(self, catalog: str) -> CatalogRules:
        """A catalog's rules as stored now (whichever replica set them)."""
        await self.catalogs.get(catalog)
        return await self.rules.read(catalog)

    # Serving.

    async def recommend(self, spec: RecommendSpec) -> Recommended:
        """A user's top-N by the catalog's serving model (the user's newest interactions
        folded in); popular items while the catalog has no model (for a user with no history
        and attributes, first those popular in their segment); then the catalog's rules.

        Raises:
            NotFound: No such catalog, or a version or alias the model does not have.
        """
        await self.catalogs.get(spec.catalog)
        # No sync with the stream here (a NATS round trip per request): this replica's own
        # ingests are applied before they answer, other replicas' within milliseconds.
        history, changed = self.feed.log(spec.catalog).history(spec.user)
        rules = self._rules_now(spec.catalog, spec.ignore_rules)
        count = self._count(spec.count)
        skip = spec.filters.exclude if spec.include_seen else spec.filters.exclude | set(history)
        query = UserQuery(
            spec.user,
            history,
            changed,
            rules.pool(count),
            spec.include_seen,
            spec.filters.exclude,
            self._allowed(spec.catalog, spec.filters, rules),
            spec.diversity,
            segment=None if history else self._segment(spec.catalog, spec.user),
        )
        ranked, resolved = await self._recommend(spec, query)
        ruled = self._ruled(spec.catalog, rules, ranked, count, skip, query.allowed)
        return self._titled(spec.catalog, ruled, resolved)

    async def _recommend(
        self, spec: RecommendSpec, query: UserQuery
    ) -> tuple[list[Ranked], Resolved | None]:
        if not self._has_model(spec.catalog):
            counts = self.feed.log(spec.catalog).popular()
            return await self._run(lambda: popular(counts, query)), None
        selector = spec.selector
        key = selector.routing_key or spec.user
        async with self.models.serving(
            spec.catalog, alias=selector.alias, version=selector.version, routing_key=key
        ) as served:
            query = replace(query, content_weight=spec.content_weight)
            if served.model.scorer.content_weight(query) > 0:
                query = replace(query, embedded=await self.embedded(spec.catalog))
            ranked = await self.models.predict(served, query)
            return ranked or [], served.resolved

    async def similar(self, spec: SimilarSpec) -> Recommended:
        """An item's neighbours by the catalog's serving model; for an item no model knows
        (or a catalog with none), by the text and attributes of the catalog's items; then
        the catalog's rules.

        Raises:
            NotFound: No such catalog, or an item that neither a model nor the items know.
        """
        await self.catalogs.get(spec.catalog)
        rules = self._rules_now(spec.catalog, spec.ignore_rules)
        count = self._count(spec.count)
        query = ItemQuery(
            spec.item,
            rules.pool(count),
            spec.filters.exclude,
            self._allowed(spec.catalog, spec.filters, rules),
        )
        ranked, resolved = None, None
        if self._has_model(spec.catalog):
            ranked, resolved = await self._similar_by_model(spec, query)
        if ranked is None:
            ranked, resolved = await self._similar_by_content(spec.catalog, query), None
        if ranked is None:
            raise NotFound(
                f"item {spec.item!r} has no interactions in a model of catalog {spec.catalog!r} "
                "and no stored text or attributes"
            )
        skip = spec.filters.exclude | {spec.item}
        ruled = self._ruled(spec.catalog, rules, ranked, count, skip, query.allowed)
        return self._titled(spec.catalog, ruled, resolved)

    def _rules_now(self, catalog: str, ignore: bool) -> RuleSet:
        """The catalog's rules in force now (only the exclusions when a request ignores
        rules)."""
        return self.rules.of(catalog).rules.at(time.time(), ranking=not ignore)

    def _ruled(
        self,
        catalog: str,
        rules: RuleSet,
        ranked: list[Ranked],
        count: int,
        skip: frozenset[str] | set[str],
        allowed: Allowed | None,
    ) -> list[Ranked]:
        """The model's ranking after the boosts, caps and pins of `rules`, cut to `count`; a
        pinned item must not be in `skip` and must pass `allowed`."""
        if not rules.ranks:
            return ranked[:count]
        items = self.items.of(catalog)

        def attributes(item_id: str) -> Mapping[str, str] | None:
            record = items.get(item_id)
            return record.attributes if record is not None else None

        def eligible(item_id: str) -> bool:
            return item_id not in skip and (allowed is None or allowed(item_id))

        return rules.apply(ranked, count, attributes, eligible)

    def _segment(self, catalog: str, user: str) -> dict[str, int] | None:
        """Users per item among the users who share every attribute of `user` (None: the
        user has no stored attributes); counted again after the catalog's users change, and
        at most SEGMENT_TTL_S after its interactions did (a scan of the catalog's users on
        the event loop: not once per request of a busy catalog)."""
        record = self.users.of(catalog).get(user)
        if record is None or not record.attributes:
            return None
        log_ = self.feed.log(catalog)
        attributes = frozenset(record.attributes.items())
        key = (catalog, attributes, self.users.changes(catalog))
        counts = self._segments.get(key)
        if counts is None:
            users = {u.id: u.attributes for u in self.users.of(catalog).values() if u.id != user}
            counts = log_.users_per_item(segment_of(record.attributes, users))
            self._segments.set(key, counts)
        return counts

    async def _similar_by_model(
        self, spec: SimilarSpec, query: ItemQuery
    ) -> tuple[list[Ranked] | None, Resolved]:
        selector = spec.selector
        async with self.models.serving(
            spec.catalog,
            alias=selector.alias,
            version=selector.version,
            routing_key=selector.routing_key,
        ) as served:
            return await self.models.predict(served, query), served.resolved

    async def _similar_by_content(self, catalog: str, query: ItemQuery) -> list[Ranked] | None:
        if query.item not in self.items.of(catalog):
            return None
        index = await self._content_index(catalog)
        return await self._run(lambda: index.similar(query))

    async def _content_index(self, catalog: str) -> ContentIndex:
        """The catalog's TF-IDF index, built again after its items changed."""
        changes = self.items.changes(catalog)
        cached = self._content.get(catalog)
        if cached is not None and cached[0] == changes:
            return cached[1]
        items = list(self.items.of(catalog).values())
        ids = [item.id for item in items]
        texts = [item_text(item.text, item.attributes) for item in items]
        index = await self._run(lambda: ContentIndex(ids, texts))
        self._content[catalog] = (changes, index)
        return index

    async def embedded(self, catalog: str) -> Embedded:
        """The catalog's item text embedded by the packaged MiniLM model, embedded again (the
        changed items only) after its items changed; the model loads on first use. Requests
        that come meanwhile wait for that embedding rather than compute it again."""
        async with self._embedding.setdefault(catalog, asyncio.Lock()):
            return await self._embed(catalog)

    async def _embed(self, catalog: str) -> Embedded:
        changes = self.items.changes(catalog)
        cached = self._embedded.get(catalog)
        if cached is not None and cached[0] == changes:
            return cached[1]
        texts = {
            item.id: embedding_text(item.text, item.attributes)
            for item in self.items.of(catalog).values()
        }
        model = await self._run(lambda: load_local_model(self.settings.embedding_device))
        previous, previous_texts = (cached[1], cached[2]) if cached is not None else (None, None)
        index = await self._run(
            lambda: Embedded.build(texts, lambda t: model.encode(t)[0], previous, previous_texts)
        )
        self._embedded[catalog] = (changes, index, texts)
        return index

    def _count(self, count: int) -> int:
        count = count or DEFAULT_COUNT
        if count > self.settings.max_results:
            raise ResourceExhausted.too_large("count", count, self.settings.max_results)
        return count

    def _has_model(self, catalog: str) -> bool:
        try:
            self.registry.get_model_now(catalog)
        except NotFound:
            return False
        return True

    def _allowed(self, catalog: str, filters: Filters, rules: RuleSet) -> Allowed | None:
        """What the attribute filters, the candidate list and the exclude rules allow (None:
        every item)."""
        excluding = any(isinstance(r.effect, Exclude) for r in rules.rules)
        if not filters.attributes and not filters.candidates and not excluding:
            return None
        items = self.items.of(catalog)
        wanted, candidates = filters.attributes, filters.candidates

        def allowed(item_id: str) -> bool:
            if candidates and item_id not in candidates:
                return False
            record = items.get(item_id)
            attributes = record.attributes if record is not None else None
            if excluding and rules.excluded(attributes):
                return False
            if not wanted:
                return True
            return attributes is not None and all(attributes.get(k) in v for k, v in wanted)

        return allowed

    def _titled(self, catalog: str, ranked: list[Ranked], model: Resolved | None) -> Recommended:
        items = self.items.of(catalog)

        def title(item_id: str) -> str:
            record = items.get(item_id)
            return record.title if record is not None else item_id

        return Recommended([(r, title(r.because) if r.because else "") for r in ranked], model)

    # Training and evaluation.

    async def snapshot(self, catalog: str) -> Snapshot:
        """A catalog's interactions, every one stored before included.

        Raises:
            NotFound: No such catalog.
            FailedPrecondition: It has no interactions.
        """
        await self.catalogs.get(catalog)
        await self.feed.sync(catalog)
        snapshot = self.feed.log(catalog).snapshot()
        if not len(snapshot):
            raise FailedPrecondition(f"catalog {catalog!r} has no interactions yet")
        return snapshot

    def check_config(self, config: Config, items: int, where: str = "config") -> None:
        """Raises ResourceExhausted for EASE over more items than allowed."""
        limit = self.settings.max_ease_items
        if config.algorithm is Algorithm.EASE and items > limit:
            raise ResourceExhausted(f"{where}: EASE over {items} items; at most {limit}")

    async def check_training(self, spec: TrainSpec) -> None:
        """What can be refused before a training is queued: an unknown catalog, EASE over too
        many items (as this replica counts them now)."""
        await self.catalogs.get(spec.catalog)
        self.check_config(spec.config, self.feed.log(spec.catalog).items)

    async def train(self, spec: TrainSpec, progress: Progress = NO_PROGRESS) -> ModelVersionInfo:
        """Trains on every interaction of the catalog, registers the next version of its model,
        optionally promotes it and announces it on nexus.recommender.trained.

        Progress: stages loading, fitting (iterations done, ETA), registering; a cancel takes
        effect between iterations, before registering.
        """
        await progress.stage("loading", 0.0, "reading the interactions")
        snapshot = await self.snapshot(spec.catalog)
        self.check_config(spec.config, len(snapshot.items))
        threads = self.settings.implicit_threads
        fitter = await self._run(lambda: Fitter(spec.config, snapshot, threads))
        await progress.stage("fitting", 5.0, f"0/{fitter.steps} steps")
        began = time.monotonic()
        while fitter.done < fitter.steps:
            await self._run(fitter.step)
            done, elapsed = fitter.done, time.monotonic() - began
            await progress.report(
                percent=5.0 + 85.0 * done / fitter.steps,
                metrics={"steps_done": done, "steps": fitter.steps},
                eta_s=elapsed / done * (fitter.steps - done),
                message=f"{done}/{fitter.steps} steps",
            )
        trained = await self._run(fitter.result)
        await progress.stage("registering", 95.0, "storing the version")
        version = await self.registry.register_object(
            spec.catalog,
            trained,
            framework=FRAMEWORK,
            metrics=_metrics(snapshot, time.monotonic() - began),
            parameters=fitter.config.parameters() | {"sequence": str(snapshot.sequence)},
            description=spec.description,
        )
        if spec.promote_to:
            await self.registry.promote(spec.catalog, version.version, spec.promote_to)
        await self._announce(spec, version, len(snapshot))
        return version

    async def evaluate(self, spec: EvaluateSpec) -> Report:
        """Splits the catalog's interactions, trains each configuration on the training part and
        scores its top-k on the rest (while the caller waits).

        Raises:
            NotFound: No such catalog.
            FailedPrecondition: It has no interactions.
            ResourceExhausted: More interactions than an evaluation may train on.
        """
        snapshot = await self.snapshot(spec.catalog)
        limit = self.settings.max_evaluate_interactions
        if len(snapshot) > limit:
            raise ResourceExhausted.too_large("interactions (evaluation)", len(snapshot), limit)
        for i, config in enumerate(spec.configs):
            self.check_config(config, len(snapshot.items), f"configs[{i}]")
        threads = self.settings.implicit_threads
        content = any(c.resolved().content_weight > 0 for c in spec.configs)
        embedded = await self.embedded(spec.catalog) if content else None
        return await self._run(
            lambda: evaluate(
                snapshot,
                spec.configs,
                k=spec.k,
                test_fraction=spec.test_fraction,
                seed=spec.seed,
                threads=threads,
                embedded=embedded,
            )
        )

    # Events and work.

    async def _announce(self, spec: TrainSpec, version: ModelVersionInfo, count: int) -> None:
        """Events are notifications: a failed publish is logged, the answer still goes out."""
        event = events_pb2.TrainingCompleted(
            model=common_pb2.ModelRef(name=version.name, version=version.version),
            catalog=spec.catalog,
            algorithm=spec.config.algorithm.value,
            interactions=count,
            promoted_to=spec.promote_to,
        )
        event_id = f"trained-{version.name}-{version.version}"
        try:
            await self._bus.publish(TRAINED, event, event_id=event_id, subject_hint=spec.catalog)
        except NexusError as err:
            log.warning("could not publish %s: %s", TRAINED, err)

    def _decode(self, batch: pb.InteractionBatch, default_time: float) -> list[Interaction]:
        """A batch from the stream, checked as a request's would be."""
        self.check_interactions(len(batch.interactions))
        return wire.interactions_of(
            batch.interactions, default_time, self.settings.max_weight, "interactions"
        )

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


def _bad_attribute(where: str, key: str, limit: int) -> NexusError:
    return InvalidArgument.for_field(
        f"{where}.attributes[{key[:32]!r}]", f"names and values of 1-{limit} characters"
    )


def _metrics(snapshot: Snapshot, fit_seconds: float) -> Mapping[str, float]:
    return {
        "users": float(len(snapshot.users)),
        "items": float(len(snapshot.items)),
        "interactions": float(len(snapshot)),
        "fit_seconds": fit_seconds,
    }
