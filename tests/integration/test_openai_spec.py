"""Every parameter of OpenAI's chat completion request, taken from OpenAI's own OpenAPI document
and sent through the real gateway to the real llm service (a tiny local model behind it).

For each property of `CreateChatCompletionRequest` the test makes values from the property's
schema: values that break it (each JSON type it does not allow, a number of 310 digits, out of
range, too long, too many, not one of the enum, a required key missing, a nested value that
breaks its own schema) and values that keep it (its enum, its bounds, minimal and full objects).
OpenAI's document itself, read as JSON Schema, decides which is which; the test expects what
OpenAI answers: a breaking value is 400 `invalid_request_error` naming the parameter (or a path
inside it), a keeping one is answered, unless the feature is one Nexus refuses
(`UNSUPPORTED`, ADR 0018: 400 `unsupported_parameter` with a message saying so).

The document lives beside the repository (`../shared/data/llm/openai_openapi/openapi.yaml`,
or `NEXUS_OPENAI_SPEC`); without it the test is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import pytest_asyncio
import yaml
from llm_testing import TINY_MODEL_NAME, build_tiny_model

from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import running_services
from nexus.gateway.testing import running_gateway
from nexus.llm.server import create
from nexus.llm.settings import LlmSettings

ROOT = Path(__file__).resolve().parents[2]
SPEC = Path(
    os.environ.get("NEXUS_OPENAI_SPEC")
    or ROOT.parent / "shared/data/llm/openai_openapi/openapi.yaml"
)
REQUEST = "CreateChatCompletionRequest"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        not SPEC.is_file(),
        reason=f"OpenAI's OpenAPI document is not at {SPEC}; set NEXUS_OPENAI_SPEC to its path",
    ),
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
HUGE = int("9" * 310)
"""A JSON number of 310 digits: more than a double holds."""
TOOL = {"type": "function", "function": {"name": "x", "parameters": {"type": "object"}}}
BASE: dict[str, Any] = {
    "model": TINY_MODEL_NAME,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 2,
}
CONTEXT: dict[str, dict[str, Any]] = {
    # What OpenAI (and Nexus) require beside these parameters: tools for a tool choice or
    # parallel tool calls, a stream for stream options.
    "tool_choice": {"tools": [TOOL]},
    "parallel_tool_calls": {"tools": [TOOL]},
    "stream_options": {"stream": True},
}
UNSUPPORTED = {
    # Parameter: what of it Nexus refuses (ADR 0010, ADR 0018).
    "n": "more than one choice",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
    "modalities": "audio output",
    "audio": "audio output",
    "store": "storing completions",
    "moderation": "moderation",
    "functions": "the deprecated functions",
    "function_call": "the deprecated functions",
    "tools": "custom (non-function) tools",
    "tool_choice": "custom tools and allowed-tools choices",
    "messages": "image, audio and file parts; function messages; assistant audio",
    "response_format": "a json_schema format without its schema",
}


# OpenAI's document as JSON Schema.


@cache
def spec() -> dict[str, Any]:
    """The document's schemas, as JSON Schema, with the limits it states in prose."""
    with SPEC.open() as f:
        document = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = {name: _json_schema(s) for name, s in document["components"]["schemas"].items()}
    _add_prose_limits(schemas)
    return {"components": {"schemas": schemas}}


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's dialect as JSON Schema: `nullable` as a null type; integers are 64-bit
    (the document's own bounds of `seed`, 2^63 rounded to a double, mean that too)."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k not in ("discriminator", "nullable")}
    if out.get("type") == "integer":
        out["minimum"] = max(out.get("minimum", INT64_MIN), INT64_MIN)
        out["maximum"] = min(out.get("maximum", INT64_MAX), INT64_MAX)
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _add_prose_limits(schemas: dict[str, Any]) -> None:
    """Limits OpenAI states in descriptions (and enforces), and one contradiction settled."""
    # `top_logprobs` is nullable in the request's own properties and in ModelResponseProperties,
    # not in CreateModelResponseProperties, which allOf joins to them: null is allowed.
    shared = schemas["CreateModelResponseProperties"]["allOf"][1]["properties"]["top_logprobs"]
    shared["type"] = ["integer", "null"]
    metadata = schemas["Metadata"]["anyOf"][0]  # "16 key-value pairs", keys <= 64, values <= 512
    metadata.update(maxProperties=16, propertyNames={"maxLength": 64})
    metadata["additionalProperties"]["maxLength"] = 512
    request = next(s for s in schemas[REQUEST]["allOf"] if "properties" in s)
    bias = request["properties"]["logit_bias"]["anyOf"][0]  # token ids to -100..100
    bias["propertyNames"] = {"pattern": "^[0-9]+$"}
    bias["additionalProperties"].update(minimum=-100, maximum=100)


@cache
def oracle() -> jsonschema.Validator:
    return jsonschema.Draft202012Validator(
        {**spec(), "$ref": f"#/components/schemas/{REQUEST}"}, format_checker=None
    )


def keeps_the_schema(body: dict[str, Any]) -> bool:
    return oracle().is_valid(body)


def resolve(schema: Any) -> dict[str, Any]:
    """`schema` with its $ref followed (and allOf merged, as the request's parts are)."""
    while isinstance(schema, dict) and "$ref" in schema:
        schema = spec()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}}
        for part in schema["allOf"]:
            part = resolve(part)
            merged["properties"].update(part.get("properties", {}))
        return merged
    return schema


def properties() -> dict[str, Any]:
    return resolve({"$ref": f"#/components/schemas/{REQUEST}"})["properties"]


# Values from a schema.


def keeping(schema: Any, depth: int = 0) -> list[Any]:
    """Values that keep `schema` (candidates: the oracle has the last word)."""
    schema = resolve(schema)
    if depth > 4:
        return []
    for union in ("anyOf", "oneOf"):
        if union in schema:  # each branch's first value first, then their seconds...
            options = [keeping(branch, depth + 1)[:3] for branch in schema[union]]
            return [v for rank in range(3) for values in options for v in values[rank : rank + 1]]
    if "enum" in schema:
        return list(schema["enum"])
    if "const" in schema:
        return [schema["const"]]
    types = schema.get("type", [])
    values: list[Any] = []
    for kind in [types] if isinstance(types, str) else types:
        values += _keeping_of_type(kind, schema, depth)
    return values


def _keeping_of_type(kind: str, schema: dict[str, Any], depth: int) -> list[Any]:
    if kind == "null":
        return [None]
    if kind == "boolean":
        return [True, False]
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is None or low == INT64_MIN:  # unbounded: small values (a model has limits)
            return [1, 16]
        middle = (low + high) / 2 if kind == "number" else (low + high) // 2
        return [low, middle, high]
    if kind == "string":
        longest = schema.get("maxLength")
        return ["x"] + (["x" * longest] if longest else [])
    if kind == "array":
        items = keeping(schema.get("items", {}), depth + 1)[:6]
        least = schema.get("minItems", 0)
        values = [[item] * max(least, 1) for item in items]
        return ([[]] if not least else []) + values
    if kind == "object":
        return _keeping_objects(schema, depth)
    return []


def _keeping_objects(schema: dict[str, Any], depth: int) -> list[Any]:
    props = schema.get("properties", {})
    required = schema.get("required", [])
    minimal = {key: _first(keeping(props.get(key, {}), depth + 1)) for key in required}
    full = {**minimal, **{key: _richest(keeping(sub, depth + 1)) for key, sub in props.items()}}
    values = [minimal, full]
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        values += [{**minimal, "1": item} for item in keeping(extra, depth + 1)[:2]]
    return values


def _first(values: list[Any]) -> Any:
    return values[0] if values else "x"


def _richest(values: list[Any]) -> Any:
    """The last object among `values` (the fullest), else the first value."""
    objects = [v for v in values if isinstance(v, dict) and v]
    return objects[-1] if objects else _first(values)


PROBES: list[Any] = [None, True, 0.5, HUGE, -HUGE, "x", [], {}, [None], {"k": None}]
"""Each JSON type, and a number of 310 digits."""


def breaking(schema: Any, depth: int = 0) -> list[Any]:
    """Values that may break `schema` (the oracle keeps only those that do)."""
    schema = resolve(schema)
    if depth > 2:
        return []
    values = list(PROBES) if depth == 0 else [None, "x", 0.5, HUGE]
    for union in ("anyOf", "oneOf"):
        for branch in schema.get(union, []):
            values += breaking(branch, depth + 1)
    if "enum" in schema:
        values.append("not-one-of-them")
    for bound, step in (("minimum", -1), ("maximum", 1)):
        if isinstance(schema.get(bound), int | float):
            values.append(schema[bound] + step)
            if schema.get("type") != "integer":
                values.append(schema[bound] + step / 2)
    if schema.get("maxLength"):
        values.append("x" * (schema["maxLength"] + 1))
    values += _breaking_arrays(schema, depth)
    values += _breaking_objects(schema, depth)
    return values


def _breaking_arrays(schema: dict[str, Any], depth: int) -> list[Any]:
    if schema.get("type") != "array":
        return []
    item = _first(keeping(schema.get("items", {})))
    values: list[Any] = [[bad] for bad in breaking(schema.get("items", {}), depth + 1)]
    if schema.get("maxItems"):
        values.append([item] * (schema["maxItems"] + 1))
    if schema.get("minItems"):
        values.append([])
    return values


def _breaking_objects(schema: dict[str, Any], depth: int) -> list[Any]:
    if schema.get("type") != "object":
        return []
    minimal = _first(_keeping_objects(schema, depth))
    values: list[Any] = [{k: v for k, v in minimal.items() if k != key} for key in minimal]
    for key, sub in schema.get("properties", {}).items():
        values += [{**minimal, key: bad} for bad in breaking(sub, depth + 1)]
    extra = schema.get("additionalProperties")
    if extra is False:
        values.append({**minimal, "unexpected": 1})
    elif isinstance(extra, dict):
        values += [{**minimal, "k": bad} for bad in breaking(extra, depth + 1)]
    if schema.get("maxProperties"):
        values.append({f"k{i}": "v" for i in range(schema["maxProperties"] + 1)})
    return values


CALL = {"id": "c1", "type": "function", "function": {"name": "x", "arguments": "{}"}}
REALISTIC: dict[str, list[Any]] = {
    # Values the schema allows that clients send, beside those made from it.
    "messages": [
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
            {
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": "no"}],
                "refusal": None,
            },
            {"role": "user", "content": "hi", "name": "ada"},
        ],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}],
    ],
    "tools": [[{**TOOL, "function": {**TOOL["function"], "description": "d", "strict": True}}]],
    "response_format": [
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "a",
                "description": "d",
                "strict": None,
                "schema": {"type": "object"},
            },
        },
    ],
    "stop": ["\n", ["a", "b", "c", "d"]],
    "logit_bias": [{"50256": -100, "1": 100}],
    "metadata": [{f"k{i}": "v" * 512 for i in range(16)}],
}


def cases(name: str) -> Iterator[tuple[Any, bool]]:
    """(value, keeps the schema) for the property `name`, each value once."""
    schema = properties()[name]
    seen: set[str] = set()
    for value in [*keeping(schema), *REALISTIC.get(name, []), *breaking(schema)]:
        key = json.dumps(value, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        yield value, keeps_the_schema(body_of(name, value))


def body_of(name: str, value: Any) -> dict[str, Any]:
    return {**BASE, **CONTEXT.get(name, {}), name: value}


def property_names() -> list[str]:
    return sorted(properties()) if SPEC.is_file() else ["(no document)"]


# The platform.


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    nats_endpoint: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in front of the llm service (the tiny model as `tiny`), with a key."""
    settings = NexusSettings(
        nats_url=nats_endpoint.url, registry_signing_key="test", log_json=False
    )
    folder = tmp_path_factory.mktemp("openai-spec")
    config = {
        "local_models": {TINY_MODEL_NAME: {"path": str(build_tiny_model(folder / "tiny"))}},
        "model_list": [
            {
                "model_name": TINY_MODEL_NAME,
                "litellm_params": {"model": f"nexus-local/{TINY_MODEL_NAME}"},
            }
        ],
    }
    (folder / "models.yaml").write_text(yaml.safe_dump(config))
    llm = LlmSettings(grpc_port=0, config_path=folder / "models.yaml", model_cache_dir=folder / "m")
    async with running_services(settings) as start:
        host = await start(create, llm)
        async with running_gateway(settings, {"llm": f"127.0.0.1:{host.port}"}) as url:
            key = await make_key(settings, "llm:invoke")
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
                yield client


def under(param: str | None, name: str) -> bool:
    """Whether `param` names the parameter `name` or a path inside it."""
    return param is not None and (param == name or param.startswith((f"{name}.", f"{name}[")))


def mismatch(name: str, value: Any, keeps: bool, response: httpx.Response) -> str | None:
    """What is wrong with the answer to one value, or None."""
    shown = json.dumps(value)[:80]
    if response.status_code >= 500:
        return f"{name}={shown}: {response.status_code} {response.text[:200]}"
    if response.status_code != 400:
        return (
            None if keeps else f"{name}={shown} breaks the schema, answered {response.status_code}"
        )
    error = response.json()["error"]
    if error["type"] != "invalid_request_error" or not under(error["param"], name):
        return f"{name}={shown}: 400 naming {error['param']!r} ({error['message']})"
    if keeps and not (error["code"] == "unsupported_parameter" and name in UNSUPPORTED):
        return f"{name}={shown} keeps the schema, refused: {error['code']} {error['message']}"
    return None


@pytest.mark.parametrize("name", property_names())
async def test_every_parameter_answers_as_openai_s_schema_says(
    gateway: httpx.AsyncClient, name: str
) -> None:
    checked = list(cases(name))
    problems = []
    for value, keeps in checked:
        response = await gateway.post("/v1/chat/completions", json=body_of(name, value))
        problems.append(mismatch(name, value, keeps, response))

    assert [p for p in problems if p] == []
    assert any(keeps for _, keeps in checked)
    assert not all(keeps for _, keeps in checked)


def test_the_document_lists_the_parameters_the_service_knows() -> None:
    """Every parameter of OpenAI's request has a rule in the llm service, and no other."""
    from nexus.llm.validation._rules import CHAT_PARAMETERS

    assert sorted(CHAT_PARAMETERS) == sorted(properties())
