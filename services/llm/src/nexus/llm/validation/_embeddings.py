"""Checks of an embeddings request: OpenAI's rules for its parameters (which allow no others),
then the features Nexus does not serve (token inputs, other vector lengths)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nexus.llm.validation._errors import (
    INVALID_TYPE,
    check_parameter,
    json_type,
    unsupported,
    validators,
    violation,
)
from nexus.llm.validation._rules import EMBEDDING_PARAMETERS

_VALIDATORS = validators(EMBEDDING_PARAMETERS)


@dataclass(frozen=True)
class EmbeddingRequest:
    """A checked embeddings request.

    Attributes:
        texts: The texts to embed.
        field: The parameter they came in ("inputs", or OpenAI's "input"), for their errors.
        dimensions: The vector length asked for, if any.
    """

    texts: Sequence[str]
    field: str = "inputs"
    dimensions: int | None = None


def embedding_model_name(model: str, raw: Mapping[str, Any]) -> str:
    """The model an embeddings request names ("" for the default), checked before the rest.

    Raises:
        InvalidArgument: A model that is not a string.
    """
    if "model" not in raw:
        return model
    check_parameter(_VALIDATORS, "model", raw["model"])
    return str(raw["model"])


def validate_embedding(inputs: Sequence[str], raw: Mapping[str, Any]) -> EmbeddingRequest:
    """The texts and options of an embeddings request (`raw`: parameters as OpenAI JSON).

    Raises:
        InvalidArgument: A parameter outside OpenAI's rules (its path in the error), or one
            that Nexus does not serve (reason UNSUPPORTED_PARAMETER).
    """
    for name, value in raw.items():
        check_parameter(_VALIDATORS, name, value)
    dimensions = raw.get("dimensions")
    dimensions = None if dimensions is None else int(dimensions)
    if "input" not in raw:
        return EmbeddingRequest(inputs, dimensions=dimensions)
    if inputs:
        raise violation("input", "'input' is set both in 'inputs' and in openai_parameters.")
    return EmbeddingRequest(_texts(raw["input"]), "input", dimensions)


def check_dimensions(model: str, asked: int | None, served: int) -> None:
    """Only a model's own vector length is served (0: not known yet, checked later)."""
    if asked is not None and served and asked != served:
        raise unsupported(
            "dimensions",
            f"The model `{model}` makes vectors of {served} dimensions; {asked} is not supported.",
        )


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    kind = type(value[0])
    for i, item in enumerate(value):
        if type(item) is not kind:  # one kind per request: texts, tokens, or token arrays
            expected = "a string" if kind is str else "tokens like input[0]"
            message = f"Invalid type for 'input[{i}]': expected {expected}, got {json_type(item)}."
            raise violation(f"input[{i}]", message, INVALID_TYPE)
    if kind is not str:
        raise unsupported("input", "Token inputs are not supported: send text.")
    return list(value)
