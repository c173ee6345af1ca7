"""The JSON Schema of a workflow definition, published as docs/orchestrator/workflow.schema.json
(a test keeps the two equal)."""

from __future__ import annotations

from typing import Any

NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
MAX_STEPS = 1000
"""Most steps a definition declares, nested ones included."""
MAX_BRANCHES = 16
"""Most branches of a `parallel` step."""
MAX_ITEMS = 1000
"""Most items a `map` step runs its steps for."""
MAX_CONCURRENCY = 100
"""Most items of a `map` step in flight at once (default `DEFAULT_CONCURRENCY`)."""
DEFAULT_CONCURRENCY = 10
MAX_DEPTH = 8
"""Most levels of runs inside runs (`parallel`, `map`, `workflow` steps)."""
MAX_TRIGGERS = 16
"""Most triggers a definition declares."""
MISFIRE_POLICIES = ("fire_once", "skip")
"""What a cron trigger does with ticks missed while no replica ran (the first is the default)."""
SUBJECT_FILTER_PATTERN = r"^nexus((\.([A-Za-z0-9_-]+|\*))+(\.>)?|\.>)$"
"""A NATS subject filter under `nexus.`: tokens, `*` for one token, a final `>` for the rest."""
MESSAGE_TYPE_PATTERN = r"^nexus\.[A-Za-z0-9_.]+$"

_NAME = {"type": "string", "pattern": NAME_PATTERN}
_EXPRESSION = {"type": "string", "minLength": 1, "maxLength": 2000}
_SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 31_536_000}
_STEPS = {"type": "array", "items": {"$ref": "#/$defs/step"}, "maxItems": MAX_STEPS}

_EVENT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["subject", "type"],
    "properties": {
        "subject": {"type": "string", "maxLength": 256, "pattern": SUBJECT_FILTER_PATTERN},
        "type": {"type": "string", "pattern": MESSAGE_TYPE_PATTERN},
        "condition": _EXPRESSION,
    },
}
"""Events of a subject filter, of a type, that pass a condition (an event trigger's, and a
`wait_event` step's with its `timeout_s`)."""

_RETRY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "initial_backoff_s": {"type": "number", "minimum": 0, "maximum": 3600},
        "max_backoff_s": {"type": "number", "minimum": 0, "maximum": 86_400},
        "multiplier": {"type": "number", "minimum": 1, "maximum": 10},
        "jitter": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

_KINDS: dict[str, Any] = {
    "call": {
        "type": "object",
        "additionalProperties": False,
        "required": ["method"],
        "properties": {
            "method": {
                "type": "string",
                "pattern": r"^nexus\.[a-z][a-z0-9_]*\.v[0-9]+\.[A-Za-z0-9_]+/[A-Za-z0-9_]+$",
            },
            "request": {"type": "object"},
        },
    },
    "publish": {
        "type": "object",
        "additionalProperties": False,
        "required": ["subject", "type"],
        "properties": {
            "subject": {"type": "string", "pattern": r"^nexus(\.[A-Za-z0-9_-]+)+$"},
            "type": {"type": "string", "pattern": MESSAGE_TYPE_PATTERN},
            "data": {"type": "object"},
        },
    },
    "switch": {
        "type": "object",
        "additionalProperties": False,
        "required": ["cases"],
        "properties": {
            "cases": {
                "type": "array",
                "minItems": 1,
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["when", "steps"],
                    "properties": {"when": _EXPRESSION, "steps": _STEPS},
                },
            },
            "default": _STEPS,
        },
    },
    "sleep": {
        "type": "object",
        "additionalProperties": False,
        "required": ["seconds"],
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 31_536_000}},
    },
    "wait_signal": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {"name": _NAME, "timeout_s": _SECONDS},
    },
    "wait_event": {
        **_EVENT,
        "properties": {**_EVENT["properties"], "timeout_s": _SECONDS, "since": _NAME},
    },
    "fail": {
        "type": "object",
        "additionalProperties": False,
        "required": ["message"],
        "properties": {"message": {"type": "string", "maxLength": 1000}},
    },
    "parallel": {
        "type": "object",
        "additionalProperties": False,
        "required": ["branches"],
        "properties": {
            "branches": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BRANCHES,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "steps"],
                    "properties": {"name": _NAME, "steps": {**_STEPS, "minItems": 1}},
                },
            },
        },
    },
    "map": {
        "type": "object",
        "additionalProperties": False,
        "required": ["items", "steps"],
        "properties": {
            "items": _EXPRESSION,
            "concurrency": {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY},
            "steps": {**_STEPS, "minItems": 1},
        },
    },
    "workflow": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": _NAME,
            "version": {"type": "integer", "minimum": 1},
            "inputs": {"type": "object"},
        },
    },
}
KINDS = tuple(_KINDS)
"""The kinds of step, one key of each step."""

_TRIGGER_KINDS: dict[str, Any] = {
    "event": _EVENT,
    "cron": {
        "type": "object",
        "additionalProperties": False,
        "required": ["schedule"],
        "properties": {
            "schedule": {"type": "string", "minLength": 1, "maxLength": 200},
            "timezone": {"type": "string", "minLength": 1, "maxLength": 64},
            "misfire": {"enum": list(MISFIRE_POLICIES)},
            "misfire_grace_s": {"type": "number", "minimum": 0, "maximum": 86_400},
        },
    },
}
TRIGGER_KINDS = tuple(_TRIGGER_KINDS)
"""The kinds of trigger (a manual StartRun needs none)."""


def _one_kind_of(kinds: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """An object with an `id`, the `common` fields, and exactly one of `kinds`."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["id"],
        "minProperties": 2,
        "properties": {"id": _NAME, **common, **kinds},
        "oneOf": [{"required": [kind]} for kind in kinds],
    }


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://nexus.dev/schemas/orchestrator/workflow.schema.json",
    "title": "Nexus workflow definition",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "steps"],
    "properties": {
        "name": _NAME,
        "description": {"type": "string", "maxLength": 2000},
        "inputs": {
            "type": "object",
            "maxProperties": 64,
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "type": {"enum": ["string", "number", "integer", "boolean", "object", "array"]},
                    "required": {"type": "boolean"},
                    "default": {},
                    "description": {"type": "string", "maxLength": 1000},
                },
            },
        },
        "timeout_s": _SECONDS,
        "steps": {**_STEPS, "minItems": 1},
        "on_failure": _STEPS,
        "outputs": {"type": "object", "maxProperties": 64},
        "triggers": {
            "type": "array",
            "items": {"$ref": "#/$defs/trigger"},
            "maxItems": MAX_TRIGGERS,
        },
    },
    "$defs": {
        "step": _one_kind_of(_KINDS, {"if": _EXPRESSION, "timeout_s": _SECONDS, "retry": _RETRY}),
        "trigger": _one_kind_of(
            _TRIGGER_KINDS, {"inputs": {"type": "object", "maxProperties": 64}}
        ),
    },
}
