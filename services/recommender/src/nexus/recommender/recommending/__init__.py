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

__all__ = [
    "FACTOR_MODELS",
    "Algorithm",
    "Allowed",
    "CatalogLog",
    "Config",
    "ContentIndex",
    "Embedded",
    "Fitter",
    "Interaction",
    "ItemQuery",
    "Metrics",
    "Ranked",
    "Report",
    "Scored",
    "Scorer",
    "Snapshot",
    "Trained",
    "UserQuery",
    "Why",
    "blend",
    "ease",
    "embedding_text",
    "evaluate",
    "item_text",
    "popular",
    "ranking_metrics",
    "stratified_split",
    "top_n",
    "user_weight",
]
