"""A source's choice of streaming detector: its kind, parameters, threshold and suppression.

A source without one gets the default (`default_config`), which follows the service's
`DEFAULT_KIND` and defaults from release to release. A source configured through BindSource
keeps what it was given, with whatever it left out filled in from the defaults of the day it was
bound, so an upgrade never changes a configured source's detector under it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from nexus.anomaly.detectors.online import (
    DEFAULT_KIND,
    DEFAULT_SUPPRESS,
    DEFAULT_THRESHOLD,
    OnlineDetector,
    SourceDetector,
    check_threshold,
    default_threshold,
    online_kind,
)
from nexus.common.errors import InvalidArgument

FIELD = "streaming"
"""The request field that carries a source's streaming configuration."""
MAX_SUPPRESS = 1_000_000
"""Most points a flag may suppress after it."""


@dataclass(frozen=True)
class StreamingConfig:
    """A validated streaming configuration (build it with `streaming_config`).

    Attributes:
        kind: The detector kind (a key of `KINDS`).
        params: The parameters as given (text or numbers), all valid for `kind`.
        threshold: The likelihood at which a point is flagged, in (0, 1] (unset: the kind's
            default).
        suppress: Points after a flag that cannot be flagged again (>= 0).
        model: The kind and every parameter's parsed value (defaults included), as JSON: two
            configurations with the same `model` learn the same way, so a saved state of one
            resumes under the other; a change of threshold or suppress keeps what was learnt.
    """

    kind: str
    params: Mapping[str, str] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    suppress: int = DEFAULT_SUPPRESS
    model: str = ""
    _make: Callable[..., OnlineDetector] | None = field(default=None, compare=False, repr=False)

    @property
    def detector_name(self) -> str:
        """What detections name as their detector: `streaming:<kind>`."""
        return f"streaming:{self.kind}"

    def source_detector(self, state_budget: int | None = None) -> SourceDetector:
        """A fresh detector for one source's points, whose state takes at most `state_budget`
        bytes encoded (None: MAX_STATE_BYTES)."""
        assert self._make is not None, "build it with streaming_config()"
        return SourceDetector(self._make, self.threshold, self.suppress, state_budget)

    def to_json(self) -> dict[str, Any]:
        """What a binding stores (read back with `config_from_json`)."""
        return {
            "kind": self.kind,
            "params": dict(self.params),
            "threshold": self.threshold,
            "suppress": self.suppress,
        }


def streaming_config(
    kind: str = "",
    params: Mapping[str, str] | None = None,
    threshold: float | None = None,
    suppress: int | None = None,
) -> StreamingConfig:
    """A validated configuration; what is left out (empty kind, None) takes today's default (the
    threshold: the kind's own default).

    Raises:
        InvalidArgument: An unknown kind or parameter, a value out of range, naming the field
            (`streaming.kind`, `streaming.parameters.<name>`, `streaming.threshold`,
            `streaming.suppress`).
    """
    cls = online_kind(kind, field=f"{FIELD}.kind")
    given = {str(name): str(value) for name, value in (params or {}).items()}
    probe = cls(given, field=f"{FIELD}.parameters")  # validates every parameter now
    threshold = default_threshold(cls.KIND) if threshold is None else threshold
    suppress = DEFAULT_SUPPRESS if suppress is None else suppress
    model = json.dumps({"kind": cls.KIND, "params": probe.params}, sort_keys=True)
    return StreamingConfig(
        kind=cls.KIND,
        params=given,
        threshold=check_threshold(threshold, f"{FIELD}.threshold"),
        suppress=_check_suppress(suppress),
        model=model,
        _make=partial(cls, given),
    )


def default_config() -> StreamingConfig:
    """What a source that chose nothing gets."""
    return streaming_config(DEFAULT_KIND)


def config_from_json(record: Mapping[str, Any]) -> StreamingConfig:
    """A configuration a binding stored (`StreamingConfig.to_json`).

    Raises:
        InvalidArgument: It is no longer valid (a kind or parameter this release dropped).
        KeyError, TypeError, ValueError: It is not such a record.
    """
    return streaming_config(
        str(record["kind"]),
        dict(record["params"]),
        float(record["threshold"]),
        int(record["suppress"]),
    )


def _check_suppress(suppress: int) -> int:
    if isinstance(suppress, bool) or int(suppress) != suppress or suppress < 0:
        raise InvalidArgument.for_field(
            f"{FIELD}.suppress", f"must be an integer >= 0, got {suppress}"
        )
    if suppress > MAX_SUPPRESS:
        raise InvalidArgument.for_field(
            f"{FIELD}.suppress", f"must be at most {MAX_SUPPRESS}, got {suppress}"
        )
    return int(suppress)
