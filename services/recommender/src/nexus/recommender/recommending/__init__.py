"""The recommender's domain, free of gRPC: interaction logs, training, serving, evaluation."""

from nexus.recommender.recommending.content import ContentIndex, item_text
from nexus.recommender.recommending.embedded import Embedded, blend, embedding_text, user_weight
from nexus.recommender.recommending.evaluation import (
    Metrics,
    Report,
    Scored,
    evaluate,
    ranking_metrics,
    stratified_split,
)
from nexus.recommender.recommending.fitting import (
    FACTOR_MODELS,
    Algorithm,
    Config,
    Fitter,
    Trained,
    ease,
)
from nexus.recommender.recommending.log import CatalogLog, Interaction, Snapshot
from nexus.recommender.recommending.rules import (
    Boost,
    Cap,
    Effect,
    Exclude,
    Match,
    Pin,
    Rule,
    RuleSet,
    Window,
)
from nexus.recommender.recommending.scoring import (
    Allowed,
    ItemQuery,
    Ranked,
    Scorer,
    UserQuery,
    Why,
    popular,
    top_n,
)
from nexus.recommender.recommending.segments import segment_first, segment_of

__all__ = [
    "FACTOR_MODELS",
    "Algorithm",
    "Allowed",
    "Boost",
    "Cap",
    "CatalogLog",
    "Config",
    "ContentIndex",
    "Effect",
    "Embedded",
    "Exclude",
    "Fitter",
    "Interaction",
    "ItemQuery",
    "Match",
    "Metrics",
    "Pin",
    "Ranked",
    "Report",
    "Rule",
    "RuleSet",
    "Scored",
    "Scorer",
    "Snapshot",
    "Trained",
    "UserQuery",
    "Why",
    "Window",
    "blend",
    "ease",
    "embedding_text",
    "evaluate",
    "item_text",
    "popular",
    "ranking_metrics",
    "segment_first",
    "segment_of",
    "stratified_split",
    "top_n",
    "user_weight",
]
