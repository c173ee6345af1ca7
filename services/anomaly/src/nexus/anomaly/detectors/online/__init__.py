"""Streaming (online) detectors: selectable per source by kind, with parameters.

Each kind is an `OnlineDetector` for one univariate series that returns an anomaly likelihood in
[0, 1] per value and saves and resumes its whole state; a `SourceDetector` runs one per value of
a source's points, applies the source's threshold and suppresses repeated flags of one event.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from nexus.anomaly.detectors._params import ParamSpec
from nexus.anomaly.detectors._types import Params
from nexus.anomaly.detectors.online._base import (
    MAX_STATE_BYTES,
    OnlineDetector,
    OnlineVerdict,
    SourceDetector,
    State,
    check_threshold,
    decode_state,
    encode_state,
    state_bytes,
)
from nexus.anomaly.detectors.online._context import ContextNovelty
from nexus.anomaly.detectors.online._ensemble import TailsAndContext, TailsContextResonance
from nexus.anomaly.detectors.online._gaussian import WindowedGaussian
from nexus.anomaly.detectors.online._resonance import AdaptiveResonance
from nexus.anomaly.detectors.online._tails import ExtremeTails
from nexus.common.errors import InvalidArgument

KINDS: dict[str, type[OnlineDetector]] = {
    kind.KIND: kind
    for kind in (
        TailsAndContext,
        ExtremeTails,
        ContextNovelty,
        AdaptiveResonance,
        TailsContextResonance,
        WindowedGaussian,
    )
}
"""Every streaming detector by the name users select it with."""

DEFAULT_KIND = TailsAndContext.KIND
"""The kind a source gets unless it chooses: the best on NAB (bench/anomaly_nab.py)."""

DEFAULT_THRESHOLD = TailsAndContext.DEFAULT_THRESHOLD
"""The default kind's threshold: a point is flagged when its likelihood reaches it."""
WARM_UP_VALUES = 800
"""Values that take every kind through its learning period and a period search."""
DEFAULT_SUPPRESS = 20
"""After a flag, the source's next points that cannot be flagged (one event, one flag)."""


def warm_up() -> None:
    """Compiles every kind's loops (or loads them from the cache) by running each on a short
    seasonal series and resuming it from its state: the service does this before it consumes
    or serves, so that no batch waits on the compiler."""
    series = np.sin(np.arange(WARM_UP_VALUES) / 5.0)
    for kind in KINDS.values():
        detector = kind()
        detector.update_many(series)
        kind().set_state(detector.get_state())


def online_kind(kind: str, field: str = "kind") -> type[OnlineDetector]:
    """The detector class of `kind` ('' for the default).

    Raises:
        InvalidArgument: No such kind.
    """
    name = kind.strip().lower() or DEFAULT_KIND
    if name not in KINDS:
        known = ", ".join(sorted(KINDS))
        raise InvalidArgument.for_field(
            field, f"unknown streaming detector {kind!r}; one of {known}"
        )
    return KINDS[name]


def online_factory(kind: str, params: Params | None = None) -> Callable[[], OnlineDetector]:
    """Builds fresh detectors of `kind` with `params` (validated now, not on the first point).

    Raises:
        InvalidArgument: An unknown kind or parameter, or a value out of range.
    """
    cls = online_kind(kind)
    cls(params)  # fail now
    return partial(cls, params)


def default_threshold(kind: str) -> float:
    """The threshold a source of `kind` gets unless it sets one ('' for the default kind).

    Raises:
        InvalidArgument: No such kind.
    """
    return online_kind(kind).DEFAULT_THRESHOLD


def online_param_specs(kind: str) -> tuple[ParamSpec, ...]:
    """The parameters of `kind`, with defaults and descriptions."""
    return online_kind(kind).PARAMS


__all__ = [
    "DEFAULT_KIND",
    "DEFAULT_SUPPRESS",
    "DEFAULT_THRESHOLD",
    "KINDS",
    "MAX_STATE_BYTES",
    "AdaptiveResonance",
    "ContextNovelty",
    "ExtremeTails",
    "OnlineDetector",
    "OnlineVerdict",
    "SourceDetector",
    "State",
    "TailsAndContext",
    "TailsContextResonance",
    "WindowedGaussian",
    "check_threshold",
    "decode_state",
    "default_threshold",
    "encode_state",
    "online_factory",
    "online_kind",
    "online_param_specs",
    "state_bytes",
    "warm_up",
]
