"""Array and parameter types shared by the detectors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]
"""A float64 array: a matrix of points (rows) by features, or a vector of scores."""

BoolArray: TypeAlias = npt.NDArray[np.bool_]
"""A boolean vector, such as the anomaly flags of a batch."""

ParamValue: TypeAlias = str | float | int
"""A detector parameter as a request carries it (text is parsed to the parameter's type)."""

Params: TypeAlias = Mapping[str, ParamValue]
"""Detector parameters by name."""
