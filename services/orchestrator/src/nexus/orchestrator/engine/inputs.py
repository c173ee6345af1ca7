"""A run's inputs checked against the workflow's declared inputs, defaults added."""

from __future__ import annotations

import json
from typing import Any

from nexus.common.errors import InvalidArgument
from nexus.orchestrator.definitions import Definition

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def checked_inputs(definition: Definition, given: dict[str, Any], limit: int) -> dict[str, Any]:
    """The run's inputs: the given ones checked against the declared ones, defaults added."""
    if len(json.dumps(given)) > limit:
        raise InvalidArgument.for_field("inputs", f"larger than {limit} bytes as JSON")
    declared = definition.inputs
    for name in given:
        if declared and name not in declared:
            raise InvalidArgument.for_field(f"inputs.{name}", "not an input of the workflow")
    inputs = dict(given)
    for name, spec in declared.items():
        if name not in inputs:
            if "default" in spec:
                inputs[name] = spec["default"]
            elif spec.get("required"):
                raise InvalidArgument.for_field(f"inputs.{name}", "is required")
            continue
        kind = spec.get("type")
        if kind:
            inputs[name] = _typed(inputs[name], kind, f"inputs.{name}")
    return inputs


def _typed(value: Any, kind: str, field: str) -> Any:
    """`value` as a `kind` (JSON numbers arrive as floats: a whole one is an integer)."""
    wrong = not isinstance(value, _TYPES[kind]) or (kind != "boolean" and isinstance(value, bool))
    if kind == "integer" and not wrong:
        wrong = float(value) != int(value)
    if wrong:
        raise InvalidArgument.for_field(field, f"must be {kind}")
    return int(value) if kind == "integer" else value
