"""Detectors by algorithm: the one place that maps an `Algorithm` to its implementation."""

from __future__ import annotations

from nexus.anomaly.detectors._algorithm import Algorithm
from nexus.anomaly.detectors._autoencoder import AutoencoderDetector
from nexus.anomaly.detectors._base import Detector
from nexus.anomaly.detectors._ensemble import EnsembleDetector, parse_members
from nexus.anomaly.detectors._params import ParamSpec, parse_params
from nexus.anomaly.detectors._sklearn import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    OneClassSVMDetector,
)
from nexus.anomaly.detectors._types import Params, ParamValue
from nexus.common.errors import InvalidArgument

_SINGLE: dict[Algorithm, type[Detector]] = {
    Algorithm.ISOLATION_FOREST: IsolationForestDetector,
    Algorithm.ONE_CLASS_SVM: OneClassSVMDetector,
    Algorithm.LOCAL_OUTLIER_FACTOR: LocalOutlierFactorDetector,
    Algorithm.AUTOENCODER: AutoencoderDetector,
}


def make_detector(
    algorithm: Algorithm | str, params: Params | None = None, *, seed: int = 0
) -> Detector:
    """An unfitted detector of `algorithm` with `params` over its defaults.

    For the ensemble, `params` holds its own parameters (`members`, `combination`) and its
    members' as `"<member>.<param>"`, e.g. `{"isolation_forest.n_estimators": "200"}`.

    Raises:
        InvalidArgument: An unknown algorithm, an unknown parameter or a value out of range.
    """
    algorithm = Algorithm.parse(algorithm)
    if algorithm is Algorithm.ENSEMBLE:
        return _make_ensemble(params or {}, seed)
    return _SINGLE[algorithm](params, seed=seed)


def param_specs(algorithm: Algorithm | str) -> tuple[ParamSpec, ...]:
    """The parameters `algorithm` accepts, with defaults and descriptions (for docs and UIs)."""
    algorithm = Algorithm.parse(algorithm)
    if algorithm is Algorithm.ENSEMBLE:
        return EnsembleDetector.PARAMS
    return _SINGLE[algorithm].PARAMS


def _make_ensemble(params: Params, seed: int) -> EnsembleDetector:
    own = {k: v for k, v in params.items() if "." not in k}
    members = parse_members(parse_params(EnsembleDetector.PARAMS, own)["members"])
    per_member = _member_params(params, members)
    detectors = {
        m: _SINGLE[m](per_member[m], seed=seed, field=f"params.{m.value}") for m in members
    }
    return EnsembleDetector(detectors, own, seed=seed)


def _member_params(
    params: Params, members: list[Algorithm]
) -> dict[Algorithm, dict[str, ParamValue]]:
    """Splits `"<member>.<param>"` keys by member; a key for a non-member is an error."""
    split: dict[Algorithm, dict[str, ParamValue]] = {m: {} for m in members}
    for key, value in params.items():
        if "." not in key:
            continue
        prefix, name = key.split(".", 1)
        member = next((m for m in members if m.value == prefix), None)
        if member is None:
            raise InvalidArgument.for_field(
                f"params.{key}", f"{prefix!r} is not a member of this ensemble"
            )
        split[member][name] = value
    return split
