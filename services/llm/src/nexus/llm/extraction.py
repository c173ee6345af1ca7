"""Structured extraction: a chat that must answer with JSON valid against a schema.

The schema goes to the provider as `response_format: json_schema` (providers that support it
constrain decoding; the others are told in the prompt), and the reply is checked here either way.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from nexus.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from nexus.llm.settings import LlmSettings
from nexus.llm.types import ChatCall
from nexus.llm.validation import check_json_schema

EXTRACTION_INVALID = "EXTRACTION_INVALID"
MAX_SCHEMA_BYTES = 64 * 1024
_SYSTEM = (
    "Extract the requested information from the user's text. Reply with one JSON object only, "
    "no prose and no code fences, that validates against this JSON schema:\n{schema}"
)


def extraction_call(
    *,
    model: str,
    text: str,
    schema: dict[str, Any],
    instructions: str,
    api_key_id: str,
    settings: LlmSettings,
) -> ChatCall:
    """The chat call that extracts `schema` from `text`.

    Raises:
        InvalidArgument: No model, an empty text, or a schema that is not a JSON schema.
        ResourceExhausted: A text or schema over the size limits.
    """
    if not model:
        raise InvalidArgument.for_field("model", "a chat model is required")
    if not text.strip():
        raise InvalidArgument.for_field("text", "must not be empty")
    if len(text) > settings.max_input_chars:
        raise ResourceExhausted.too_large("text", len(text), settings.max_input_chars)
    rendered = json.dumps(schema, sort_keys=True)
    if not schema:
        raise InvalidArgument.for_field("json_schema", "a schema is required")
    if len(rendered) > MAX_SCHEMA_BYTES:
        raise ResourceExhausted.too_large("json_schema", len(rendered), MAX_SCHEMA_BYTES)
    check_json_schema("json_schema", schema)
    system = _SYSTEM.format(schema=rendered)
    if instructions.strip():
        system = f"{system}\n\n{instructions.strip()}"
    return ChatCall(
        model=model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
        params={
            "temperature": 0.0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "extraction", "schema": schema},
            },
        },
        api_key_id=api_key_id,
    )


def parse_reply(reply: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of a model's reply, checked against `schema`.

    Raises:
        FailedPrecondition: The reply is not a JSON object valid against the schema (reason
            EXTRACTION_INVALID; the message says why).
    """
    text = _strip_fences(reply.strip())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _invalid(f"the model's reply is not JSON ({err.msg})") from err
    if not isinstance(data, dict):
        raise _invalid("the model's reply is not a JSON object")
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(data)
    )
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise _invalid(f"the model's reply does not fit the schema at {path}: {error.message}")
    return data


def _strip_fences(text: str) -> str:
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def _invalid(message: str) -> FailedPrecondition:
    return FailedPrecondition(message, reason=EXTRACTION_INVALID)
