"""Evaluating streaming detectors: NAB's scoring (Lavin & Ahmad, 2015) on labelled series."""

from nexus.anomaly.evaluation.nab import (
    PROFILES,
    CostProfile,
    LabelledSeries,
    ProfileScore,
    ScoredCorpus,
    load_corpus,
    suppressed_flags,
)

__all__ = [
    "PROFILES",
    "CostProfile",
    "LabelledSeries",
    "ProfileScore",
    "ScoredCorpus",
    "load_corpus",
    "suppressed_flags",
]
