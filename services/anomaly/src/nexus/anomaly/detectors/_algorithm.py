"""The detection algorithms a model can be trained with."""

from __future__ import annotations

from enum import StrEnum

from nexus.common.errors import InvalidArgument


class Algorithm(StrEnum):
    """A detection algorithm; the value is its wire and registry name."""

    ISOLATION_FOREST = "isolation_forest"
    ONE_CLASS_SVM = "one_class_svm"
    LOCAL_OUTLIER_FACTOR = "local_outlier_factor"
    AUTOENCODER = "autoencoder"
    ENSEMBLE = "ensemble"

    @classmethod
    def parse(cls, value: Algorithm | str, field: str = "algorithm") -> Algorithm:
        """The algorithm named by `value`.

        Raises:
            InvalidArgument: `value` names no algorithm.
        """
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(a.value for a in cls)
            raise InvalidArgument.for_field(
                field, f"unknown algorithm {value!r}; expected one of {names}"
            ) from None
