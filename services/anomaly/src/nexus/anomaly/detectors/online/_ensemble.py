"""The default streaming detector: extreme-value tails and contextual novelty together.

The two see different things. `tails` asks how improbable a value, its seasonal residual or its
local spread is against recent history; `context` asks whether the value's level and the runs
before it have been seen before. Their likelihoods are combined as independent evidence that a
value is normal (a noisy-OR): 1 - (1 - tails) * (1 - context). A value that one of them finds
improbable and the other new comes out the most anomalous; one alone must be very sure.
Parameters reach a member as "<member>.<parameter>", e.g. `tails.window`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nexus.anomaly.detectors._types import FloatArray, Params, ParamValue
from nexus.anomaly.detectors.online._base import OnlineDetector, Periods, Searches, State
from nexus.anomaly.detectors.online._context import ContextNovelty
from nexus.anomaly.detectors.online._resonance import AdaptiveResonance
from nexus.anomaly.detectors.online._tails import ExtremeTails
from nexus.common.errors import InvalidArgument


class TailsAndContext(OnlineDetector):
    """See the module docstring."""

    KIND = "ensemble"
    DEFAULT_THRESHOLD = 0.9999
    DESCRIPTION = "Noisy-OR of the extreme-value tails and the contextual novelty (the default)"
    PARAMS = ()
    MEMBERS: tuple[type[OnlineDetector], ...] = (ExtremeTails, ContextNovelty)
    """The members, `tails` first (the one that searches for periods)."""

    def __init__(
        self,
        params: Params | None = None,
        *,
        field: str = "params",
        state_budget: int | None = None,
    ) -> None:
        super().__init__({}, field=field, state_budget=state_budget)
        members = self.MEMBERS
        own = _by_member(members, params or {}, field)
        self.params = {f"{m}.{k}": v for m, values in own.items() for k, v in values.items()}
        fields = [f"{field}.{member.KIND}" for member in members]
        alone = [  # each member's parameters checked on their own
            member(own.get(member.KIND), field=name)
            for member, name in zip(members, fields, strict=True)
        ]
        # The budget shared: each member in turn gets what the later ones' smallest states
        # leave, and the next what it takes (a fixed state takes its size; the context memory
        # fills what is left).
        left = self.state_budget
        self._members = []
        for at, (member, name) in enumerate(zip(members, fields, strict=True)):
            later = sum(other.smallest_state() for other in alone[at + 1 :])
            built = member(own.get(member.KIND), field=name, state_budget=left - later)
            left -= built.state_bound()
            self._members.append(built)

    def state_bound(self) -> int:
        return sum(member.state_bound() for member in self._members)

    def smallest_state(self) -> int:
        return sum(member.smallest_state() for member in self._members)

    def update(self, value: float) -> float:
        normal = 1.0
        for member in self._members:
            normal *= 1.0 - member.update(value)
        return 1.0 - normal

    def update_many(self, values: FloatArray, periods: Periods | None = None) -> FloatArray:
        normal = np.ones(len(values))
        for member in self._members:  # only `tails` searches for periods
            normal *= 1.0 - member.update_many(values, periods)
        return 1.0 - normal

    def period_searches(self, values: FloatArray) -> Searches:
        return self._members[0].period_searches(values)  # `tails` (MEMBERS)

    def get_state(self) -> State:
        return {
            f"{member.KIND}/{k}": v
            for member in self._members
            for k, v in member.get_state().items()
        }

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        for member in self._members:
            prefix = f"{member.KIND}/"
            member.set_state(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )


class TailsContextResonance(TailsAndContext):
    """The default's two members and `resonance` (the shape of the last values against the
    learnt ones, ADR 0051) as a third, in the same noisy-OR."""

    KIND = "ensemble_resonance"
    DESCRIPTION = "Noisy-OR of the tails, the contextual novelty and the adaptive resonance"
    MEMBERS = (ExtremeTails, ContextNovelty, AdaptiveResonance)


def _by_member(
    members: tuple[type[OnlineDetector], ...], params: Params, field: str
) -> dict[str, dict[str, ParamValue]]:
    kinds = {member.KIND for member in members}
    grouped: dict[str, dict[str, ParamValue]] = {}
    for name, value in params.items():
        member, _, param = name.partition(".")
        if member not in kinds or not param:
            expected = ", ".join(f"{k}.<parameter>" for k in sorted(kinds))
            raise InvalidArgument.for_field(f"{field}.{name}", f"unknown parameter; use {expected}")
        grouped.setdefault(member, {})[param] = value
    return grouped
