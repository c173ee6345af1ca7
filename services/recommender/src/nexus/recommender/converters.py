"""Protobuf messages <-> domain objects, in one place; the servicer only calls these."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.common.v1 import common_pb2
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.errors import InvalidArgument
from nexus.common.registry import ModelVersionInfo, Resolved, Selector
from nexus.common.registry.converters import timestamp, version_to_proto
from nexus.recommender import wire
from nexus.recommender.engine import (
    CatalogView,
    EvaluateSpec,
    Filters,
    Recommended,
    RecommendSpec,
    SimilarSpec,
    TrainSpec,
)
from nexus.recommender.recommending import (
    Algorithm,
    Boost,
    Cap,
    Config,
    Effect,
    Exclude,
    Interaction,
    Match,
    Pin,
    Ranked,
    Report,
    Rule,
    Why,
    Window,
)
from nexus.recommender.stores import CatalogInfo, CatalogRules, ItemRecord, UserRecord

ALGORITHMS = {
    pb.ALGORITHM_UNSPECIFIED: Algorithm.ALS,
    pb.ALGORITHM_ALS: Algorithm.ALS,
    pb.ALGORITHM_BPR: Algorithm.BPR,
    pb.ALGORITHM_EASE: Algorithm.EASE,
    pb.ALGORITHM_POPULARITY: Algorithm.POPULARITY,
    pb.ALGORITHM_CONTENT: Algorithm.CONTENT,
}
ENUMS = {
    Algorithm.ALS: pb.ALGORITHM_ALS,
    Algorithm.BPR: pb.ALGORITHM_BPR,
    Algorithm.EASE: pb.ALGORITHM_EASE,
    Algorithm.POPULARITY: pb.ALGORITHM_POPULARITY,
    Algorithm.CONTENT: pb.ALGORITHM_CONTENT,
}
REASONS = {
    Why.SIMILAR_TO_SEEN: pb.REASON_KIND_SIMILAR_TO_SEEN,
    Why.POPULAR: pb.REASON_KIND_POPULAR,
    Why.SIMILAR_TO_ITEM: pb.REASON_KIND_SIMILAR_TO_ITEM,
    Why.SEGMENT_POPULAR: pb.REASON_KIND_SEGMENT_POPULAR,
    Why.BOOSTED: pb.REASON_KIND_BOOSTED,
    Why.BURIED: pb.REASON_KIND_BURIED,
    Why.PINNED: pb.REASON_KIND_PINNED,
}
DEFAULT_K, DEFAULT_TEST_FRACTION, DEFAULT_SEED = 10, 0.25, 42


def catalog_info(catalog: pb.Catalog) -> CatalogInfo:
    """A catalog to create."""
    return CatalogInfo(catalog.name, catalog.description)


def catalog_to_proto(info: CatalogInfo, view: CatalogView | None = None) -> pb.Catalog:
    """A catalog, with its counts when `view` has them."""
    catalog = pb.Catalog(
        name=info.name, description=info.description, create_time=timestamp(info.created)
    )
    if view is not None:
        catalog.users, catalog.items = view.users, view.items
        catalog.interactions, catalog.item_records = view.interactions, view.item_records
    return catalog


def interactions_of(request: pb.IngestInteractionsRequest, max_weight: float) -> list[Interaction]:
    """A request's interactions, checked; those without a time happened now."""
    return wire.interactions_of(request.interactions, time.time(), max_weight, "interactions")


def items_of(request: pb.UpsertItemsRequest) -> list[ItemRecord]:
    """A request's items."""
    return [
        ItemRecord(request.catalog, item.id, dict(item.attributes), item.text)
        for item in request.items
    ]


def users_of(request: pb.UpsertUsersRequest) -> list[UserRecord]:
    """A request's users."""
    return [UserRecord(request.catalog, user.id, dict(user.attributes)) for user in request.users]


def _match_of(match: pb.AttributeFilter) -> Match:
    return Match(match.key, frozenset(match.values))


def _effect_of(rule: pb.Rule, where: str) -> Effect:
    match rule.WhichOneof("effect"):
        case "boost":
            return Boost(_match_of(rule.boost.match), rule.boost.shift)
        case "pin":
            return Pin(rule.pin.item_id, rule.pin.position)
        case "cap":
            return Cap(rule.cap.key, rule.cap.max_items)
        case "exclude":
            return Exclude(_match_of(rule.exclude.match))
    raise InvalidArgument.for_field(f"{where}.effect", "one of boost, pin, cap, exclude")


def _seconds(stamp: Timestamp, given: bool) -> float | None:
    return float(stamp.seconds + stamp.nanos / 1e9) if given else None


def rules_of(request: pb.SetRulesRequest) -> list[Rule]:
    """A request's rules (each with exactly one effect)."""
    return [
        Rule(
            rule.name,
            _effect_of(rule, f"rules[{i}]"),
            Window(
                _seconds(rule.start_time, rule.HasField("start_time")),
                _seconds(rule.end_time, rule.HasField("end_time")),
            ),
        )
        for i, rule in enumerate(request.rules)
    ]


def _filter(match: Match) -> pb.AttributeFilter:
    return pb.AttributeFilter(key=match.key, values=sorted(match.values))


def _rule_to_proto(rule: Rule) -> pb.Rule:
    out = pb.Rule(name=rule.name)
    match rule.effect:
        case Boost(match=m, shift=shift):
            out.boost.CopyFrom(pb.Boost(match=_filter(m), shift=shift))
        case Pin(item=item, position=position):
            out.pin.CopyFrom(pb.Pin(item_id=item, position=position))
        case Cap(key=key, limit=limit):
            out.cap.CopyFrom(pb.Cap(key=key, max_items=limit))
        case Exclude(match=m):
            out.exclude.CopyFrom(pb.Exclude(match=_filter(m)))
    if rule.window.start is not None:
        out.start_time.FromNanoseconds(round(rule.window.start * 1e9))
    if rule.window.end is not None:
        out.end_time.FromNanoseconds(round(rule.window.end * 1e9))
    return out


def rules_to_proto(stored: CatalogRules) -> tuple[list[pb.Rule], Timestamp | None]:
    """A catalog's rules and when they were stored (None: never)."""
    updated = timestamp(stored.updated) if stored.updated is not None else None
    return [_rule_to_proto(r) for r in stored.rules.rules], updated


def filters_of(filters: pb.Filters) -> Filters:
    """Which items may be returned."""
    keys = [f.key for f in filters.attributes]
    if len(set(keys)) != len(keys):
        raise InvalidArgument.for_field("filters.attributes", "each key at most once")
    return Filters(
        attributes=tuple((f.key, frozenset(f.values)) for f in filters.attributes),
        exclude=frozenset(filters.exclude_item_ids),
        candidates=frozenset(filters.candidate_item_ids),
    )


def recommend_spec(request: pb.RecommendRequest) -> RecommendSpec:
    """A Recommend call."""
    return RecommendSpec(
        catalog=request.catalog,
        user=request.user_id,
        count=request.count,
        include_seen=request.include_seen,
        filters=filters_of(request.filters),
        selector=Selector(request.alias, request.version, request.routing_key),
        diversity=request.diversity,
        content_weight=(request.content_weight if request.HasField("content_weight") else None),
        ignore_rules=request.ignore_rules,
    )


def similar_spec(request: pb.SimilarItemsRequest) -> SimilarSpec:
    """A SimilarItems call."""
    return SimilarSpec(
        catalog=request.catalog,
        item=request.item_id,
        count=request.count,
        filters=filters_of(request.filters),
        selector=Selector(request.alias, request.version, request.routing_key),
        ignore_rules=request.ignore_rules,
    )


def _reason(ranked: Ranked, title: str) -> pb.Reason:
    """The kind says what placed the item (a rule, else the model); the text, for people,
    says why the model chose it (or "featured" for a pinned item the model did not rank)."""
    texts = {
        Why.SIMILAR_TO_SEEN: f"because you liked {title}",
        Why.POPULAR: "popular right now",
        Why.SIMILAR_TO_ITEM: f"similar to {title}",
        Why.SEGMENT_POPULAR: "popular with people like you",
    }
    kind = REASONS[ranked.placed or ranked.why]
    text = texts.get(ranked.why, "featured")
    return pb.Reason(kind=kind, item_id=ranked.because, text=text, rule=ranked.rule)


def _items(recommended: Recommended) -> list[pb.ScoredItem]:
    return [
        pb.ScoredItem(item_id=r.item, score=r.score, reason=_reason(r, title))
        for r, title in recommended.items
    ]


def _model(resolved: Resolved | None, catalog: str) -> common_pb2.ModelRef:
    if resolved is None:
        return common_pb2.ModelRef(name=catalog)
    return common_pb2.ModelRef(name=resolved.name, version=resolved.version, alias=resolved.alias)


def recommended_to_proto(recommended: Recommended, catalog: str) -> pb.RecommendResponse:
    """A Recommend call's answer."""
    return pb.RecommendResponse(items=_items(recommended), model=_model(recommended.model, catalog))


def similar_to_proto(recommended: Recommended, catalog: str) -> pb.SimilarItemsResponse:
    """A SimilarItems call's answer."""
    return pb.SimilarItemsResponse(
        items=_items(recommended), model=_model(recommended.model, catalog)
    )


def config_of(config: pb.ModelConfig, where: str) -> Config:
    """An algorithm and its hyperparameters."""
    if config.algorithm not in ALGORITHMS:
        raise InvalidArgument.for_field(f"{where}.algorithm", f"unknown {config.algorithm}")
    h = config.hyperparameters
    return Config(
        algorithm=ALGORITHMS[config.algorithm],
        factors=h.factors,
        iterations=h.iterations,
        regularization=h.regularization,
        alpha=h.alpha,
        learning_rate=h.learning_rate,
        ease_lambda=h.ease_lambda,
        seed=h.seed,
        binary=h.binary,
        content_weight=h.content_weight,
        content_shrinkage=h.content_shrinkage,
    )


def config_to_proto(config: Config) -> pb.ModelConfig:
    """A configuration as it ran (defaults filled in)."""
    c = config.resolved()
    return pb.ModelConfig(
        algorithm=ENUMS[c.algorithm],
        hyperparameters=pb.Hyperparameters(
            factors=c.factors,
            iterations=c.iterations,
            regularization=c.regularization,
            alpha=c.alpha,
            learning_rate=c.learning_rate,
            ease_lambda=c.ease_lambda,
            seed=c.seed,
            binary=c.binary,
            content_weight=c.content_weight,
            content_shrinkage=c.content_shrinkage,
        ),
    )


def train_spec(request: pb.TrainRequest) -> TrainSpec:
    """A training."""
    return TrainSpec(
        catalog=request.catalog,
        config=config_of(request.config, "config"),
        promote_to=request.promote_to,
        description=request.description,
    )


def trained_to_proto(version: ModelVersionInfo) -> pb.TrainResponse:
    """A training's result."""
    return pb.TrainResponse(version=version_to_proto(version))


def evaluate_spec(request: pb.EvaluateRequest) -> EvaluateSpec:
    """An Evaluate call."""
    return EvaluateSpec(
        catalog=request.catalog,
        configs=tuple(config_of(c, f"configs[{i}]") for i, c in enumerate(request.configs)),
        k=request.k or DEFAULT_K,
        test_fraction=request.test_fraction or DEFAULT_TEST_FRACTION,
        seed=request.seed or DEFAULT_SEED,
    )


def report_to_proto(report: Report) -> pb.EvaluateResponse:
    """An Evaluate call's answer."""
    return pb.EvaluateResponse(
        evaluations=[
            pb.Evaluation(
                config=config_to_proto(s.config),
                metrics=pb.RankingMetrics(
                    map=s.metrics.map,
                    ndcg=s.metrics.ndcg,
                    precision=s.metrics.precision,
                    recall=s.metrics.recall,
                ),
                fit_seconds=s.fit_seconds,
            )
            for s in report.scored
        ],
        k=report.k,
        users=report.users,
        train_interactions=report.train_interactions,
        test_interactions=report.test_interactions,
    )
