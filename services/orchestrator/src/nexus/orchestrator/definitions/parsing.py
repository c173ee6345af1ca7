"""Parsing and checking a definition document, each error naming the field and its line.

Three passes, each reporting every violation it finds: the text (YAML or JSON syntax, at its
line), the published JSON Schema (`schema.SCHEMA`), then what a schema cannot say: unique step
ids, CEL expressions that compile, RPC methods and event types that the platform's descriptors
know (so a service added later is a step at once, with no code here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import yaml
from croniter import croniter
from google.protobuf import descriptor_pool

from nexus.common.auth import load_api_descriptors
from nexus.common.errors import FieldViolation, InvalidArgument
from nexus.orchestrator.definitions.model import Definition
from nexus.orchestrator.definitions.schema import KINDS, MAX_STEPS, SCHEMA, TRIGGER_KINDS
from nexus.orchestrator.expressions import ExpressionError, compiled, expressions_in, roots

TRIGGER_VARIABLES = {"event": frozenset({"event"}), "cron": frozenset({"tick"})}
"""What the expressions of each kind of trigger may read (a run has no steps yet)."""
WAIT_EVENT_VARIABLES = frozenset({"event", "inputs", "steps", "run", "item"})
"""What a `wait_event` step's condition may read: the event and the run's context."""

Path = tuple[str | int, ...]
MAX_VIOLATIONS = 20
"""Violations reported at most (the first ones, in document order)."""
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def parse_definition(text: str, fmt: str = "") -> tuple[Definition, str]:
    """The checked definition of a document, and its format ("yaml" or "json").

    Raises:
        InvalidArgument: One violation per problem (at most `MAX_VIOLATIONS`), each
            `<field>: <what> (line <n>)`; the message is the first one.
    """
    fmt = fmt or ("json" if text.lstrip().startswith("{") else "yaml")
    document, lines = _load(text, fmt)
    violations = list(_schema_violations(document, lines))
    if not violations:
        violations = list(_semantic_violations(document, lines))
    if violations:
        violations = list(dict.fromkeys(violations))[:MAX_VIOLATIONS]
        first = violations[0]
        raise InvalidArgument(f"{first.field}: {first.description}", violations=violations)
    return Definition.of(document), fmt


_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_definition(text: str, fmt: str) -> Definition:
    """A stored definition, which `parse_definition` accepted when it was registered: loaded
    without its checks (every replica loads every version it runs or triggers; the checks of
    a long definition take a second of CPU)."""
    document = json.loads(text) if fmt == "json" else yaml.load(text, Loader=_FAST_LOADER)
    return Definition.of(document)


def _load(text: str, fmt: str) -> tuple[dict[str, Any], dict[Path, int]]:
    try:
        document = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise _syntax(f"not JSON: {err.msg}", err.lineno) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise _syntax(f"not YAML: {getattr(err, 'problem', None) or err}", line) from err
    if not isinstance(document, dict):
        raise _syntax("the document must be an object (a mapping)", 1)
    return document, _lines(text)


def _syntax(description: str, line: int) -> InvalidArgument:
    where = f" (line {line})" if line else ""
    return InvalidArgument.for_field("definition", f"{description}{where}")


def _lines(text: str) -> dict[Path, int]:
    """The line of every value of the document, by path (YAML's composer marks every node;
    JSON is YAML, except for rare escapes, where lines are then left out)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[Path, int] = {}
    _mark(root, (), lines)
    return lines


def _mark(node: yaml.Node | None, path: Path, lines: dict[Path, int]) -> None:
    if node is None:
        return
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[(*path, str(key.value))] = key.start_mark.line + 1
            _mark(value, (*path, str(key.value)), lines)
            lines[(*path, str(key.value))] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _mark(item, (*path, index), lines)


def field_path(path: Path) -> str:
    """`("steps", 2, "call", "method")` -> `steps[2].call.method`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "definition"


def _violation(path: Path, description: str, lines: dict[Path, int]) -> FieldViolation:
    line = next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), 0)
    where = f" (line {line})" if line else ""
    return FieldViolation(field_path(path), f"{description}{where}")


def _schema_violations(
    document: dict[str, Any], lines: dict[Path, int]
) -> Iterator[FieldViolation]:
    errors = sorted(
        _VALIDATOR.iter_errors(document), key=lambda e: _order(tuple(e.absolute_path), lines)
    )
    for error in errors:
        yield _violation(_where(error), _describe(error), lines)


def _where(error: jsonschema.ValidationError) -> Path:
    """The path of the value at fault: an unexpected key's own, not its object's."""
    path: Path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        extra = [key for key in error.instance if key not in allowed]
        if len(extra) == 1:
            return (*path, extra[0])
    return path


def _order(path: Path, lines: dict[Path, int]) -> tuple[int, str]:
    return lines.get(path, 0), field_path(path)


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator in ("oneOf", "minProperties") and "id" in error.schema.get("required", ()):
        if "cron" in error.schema.get("properties", {}):
            return "a trigger has exactly one kind: " + ", ".join(TRIGGER_KINDS)
        return "a step has exactly one kind: " + ", ".join(KINDS)
    return str(error.message)


def _semantic_violations(
    document: dict[str, Any], lines: dict[Path, int]
) -> Iterator[FieldViolation]:
    seen: dict[str, Path] = {}
    count = 0
    for path, step in _steps(document):
        count += 1
        if step["id"] in seen:
            first = field_path(seen[step["id"]])
            yield _violation(
                (*path, "id"), f"duplicate step id {step['id']!r} (first at {first})", lines
            )
        yield from (_violation(p, d, lines) for p, d in _since_problems(path, step, seen))
        seen.setdefault(step["id"], path)
        yield from (_violation(p, d, lines) for p, d in _step_problems(path, step))
    if count > MAX_STEPS:
        yield _violation(("steps",), f"{count} steps; at most {MAX_STEPS}", lines)
    for name, value in document.get("outputs", {}).items():
        yield from (
            _violation(p, d, lines) for p, d in _template_problems(("outputs", name), value)
        )
    yield from (_violation(p, d, lines) for p, d in _trigger_problems(document))


def _trigger_problems(document: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    seen: dict[str, int] = {}
    for index, trigger in enumerate(document.get("triggers", [])):
        path: Path = ("triggers", index)
        if trigger["id"] in seen:
            first = field_path(("triggers", seen[trigger["id"]]))
            yield (*path, "id"), f"duplicate trigger id {trigger['id']!r} (first at {first})"
        seen.setdefault(trigger["id"], index)
        kind = "event" if "event" in trigger else "cron"
        allowed = TRIGGER_VARIABLES[kind]
        if kind == "event":
            yield from _event_problems((*path, "event"), trigger["event"], allowed)
        else:
            yield from _cron_problems((*path, "cron"), trigger["cron"])
        yield from _trigger_input_problems(path, trigger.get("inputs", {}), document, allowed)


def _event_problems(
    path: Path, event: dict[str, Any], allowed: frozenset[str]
) -> Iterator[tuple[Path, str]]:
    if find_message(event["type"]) is None:
        yield (*path, "type"), f"unknown message type {event['type']}"
    if "condition" in event:
        yield from _expression_problems((*path, "condition"), event["condition"], allowed)


def _cron_problems(path: Path, cron: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    if not croniter.is_valid(cron["schedule"]):
        yield (
            (*path, "schedule"),
            f"not a cron schedule: {cron['schedule']!r} (minute hour day month weekday, "
            "and an optional sixth field for seconds)",
        )
    if "timezone" in cron and not valid_timezone(cron["timezone"]):
        yield (*path, "timezone"), f"unknown time zone {cron['timezone']!r} (IANA names)"


def valid_timezone(name: str) -> bool:
    """Whether `name` is an IANA time zone this process knows (`Europe/Berlin`, `UTC`)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _trigger_input_problems(
    path: Path, inputs: dict[str, Any], document: dict[str, Any], allowed: frozenset[str]
) -> Iterator[tuple[Path, str]]:
    declared = document.get("inputs", {})
    for name, value in inputs.items():
        if declared and name not in declared:
            yield (*path, "inputs", name), "not an input of the workflow"
        for source in expressions_in(value):
            yield from _expression_problems((*path, "inputs", name), source, allowed)
    for name, spec in declared.items():
        if spec.get("required") and "default" not in spec and name not in inputs:
            yield (*path, "inputs"), f"the required input {name!r} gets no value"


def step_paths(document: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every step of a (schema-valid) document with its path, nested ones included."""
    return _steps(document)


def _steps(document: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any]]]:
    for key in ("steps", "on_failure"):
        yield from _nested((key,), document.get(key, []))


def _nested(path: Path, steps: list[dict[str, Any]]) -> Iterator[tuple[Path, dict[str, Any]]]:
    for index, step in enumerate(steps):
        here = (*path, index)
        yield here, step
        switch = step.get("switch")
        if switch:
            for case_index, case in enumerate(switch["cases"]):
                yield from _nested((*here, "switch", "cases", case_index, "steps"), case["steps"])
            yield from _nested((*here, "switch", "default"), switch.get("default", []))
        for number, branch in enumerate(step.get("parallel", {}).get("branches", [])):
            yield from _nested((*here, "parallel", "branches", number, "steps"), branch["steps"])
        if "map" in step:
            yield from _nested((*here, "map", "steps"), step["map"]["steps"])


def _step_problems(path: Path, step: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    if "if" in step:
        yield from _expression_problems((*path, "if"), step["if"])
    if "call" in step:
        method = step["call"]["method"]
        if find_method(method) is None:
            yield (*path, "call", "method"), f"unknown method {method}"
        yield from _template_problems((*path, "call", "request"), step["call"].get("request", {}))
    if "publish" in step:
        kind = step["publish"]["type"]
        if find_message(kind) is None:
            yield (*path, "publish", "type"), f"unknown message type {kind}"
        yield from _template_problems((*path, "publish", "data"), step["publish"].get("data", {}))
    if "wait_event" in step:
        yield from _wait_event_problems((*path, "wait_event"), step["wait_event"])
    if "switch" in step:
        for index, case in enumerate(step["switch"]["cases"]):
            yield from _expression_problems((*path, "switch", "cases", index, "when"), case["when"])
    if "map" in step:
        yield from _expression_problems((*path, "map", "items"), step["map"]["items"])
    if "parallel" in step:
        names = [branch["name"] for branch in step["parallel"]["branches"]]
        if len(set(names)) != len(names):
            yield (*path, "parallel", "branches"), "branch names must be unique"
    if "workflow" in step:
        inputs = step["workflow"].get("inputs", {})
        yield from _template_problems((*path, "workflow", "inputs"), inputs)


def _wait_event_problems(path: Path, wait: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    if find_message(wait["type"]) is None:
        yield (*path, "type"), f"unknown message type {wait['type']}"
    if "condition" in wait:
        yield from _expression_problems(
            (*path, "condition"), wait["condition"], WAIT_EVENT_VARIABLES, "a wait_event step"
        )


def _since_problems(
    path: Path, step: dict[str, Any], earlier: dict[str, Path]
) -> Iterator[tuple[Path, str]]:
    """A `wait_event`'s `since` names `step` (the default), `run`, or a step before it."""
    since = step.get("wait_event", {}).get("since", "step")
    if since not in ("step", "run") and since not in earlier:
        yield (
            (*path, "wait_event", "since"),
            f"since {since!r}: 'step', 'run' or the id of a step before this one",
        )


def _template_problems(path: Path, template: Any) -> Iterator[tuple[Path, str]]:
    for source in expressions_in(template):
        yield from _expression_problems(path, source)


def _expression_problems(
    path: Path, source: str, allowed: frozenset[str] | None = None, reader: str = "a trigger"
) -> Iterator[tuple[Path, str]]:
    try:
        compiled(source)
    except ExpressionError as err:
        yield path, f"bad expression: {err}"
        return
    unknown = sorted(roots(source) - allowed) if allowed is not None else []
    if unknown:
        known = ", ".join(sorted(allowed or ()))
        yield path, f"bad expression: {reader} reads only {known}, not {unknown[0]!r}"


def find_method(name: str) -> Any:
    """The descriptor of `nexus.<area>.v1.<Service>/<Method>`, or None when no generated
    module of `nexus.api` declares it."""
    load_api_descriptors()
    try:
        return descriptor_pool.Default().FindMethodByName(name.replace("/", "."))
    except KeyError:
        return None


def find_message(name: str) -> Any:
    """The descriptor of a message type of `nexus.api`, or None."""
    load_api_descriptors()
    try:
        return descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
