"""Checks of a request before it costs anything: the one place where the rules of chat and
embedding requests live.

OpenAI's rules for every parameter of its chat completion and embeddings requests (type, range,
size, values, required and unknown names) are written as JSON schemas (`_rules`); Nexus's own
rules (limits from the settings, roles, stop sequences, names, tools and tool_choice, JSON
schemas) and the features it does not serve come after them. The native API and the gateway's
OpenAI surface, which only translates JSON to the request messages, both reach them. Field
paths name the parameters as OpenAI clients write them (`messages[2].role`, `temperature`) and
the error's reason is OpenAI's error code (`INVALID_TYPE`, `UNSUPPORTED_PARAMETER`, ...), so an
HTTP client sees which parameter was wrong and why.
"""

from nexus.llm.validation._chat import (
    FORWARDED,
    MAX_STOP_CHARS,
    NAME,
    ROLES,
    TOOL_CHOICES,
    check_json_schema,
    check_name,
    messages_from_openai,
    model_name,
    validate_call,
    validate_messages,
    validate_params,
)
from nexus.llm.validation._embeddings import (
    EmbeddingRequest,
    check_dimensions,
    embedding_model_name,
    validate_embedding,
)
from nexus.llm.validation._errors import (
    EMPTY_ARRAY,
    INVALID_TYPE,
    INVALID_VALUE,
    MISSING_REQUIRED_PARAMETER,
    UNKNOWN_PARAMETER,
    UNSUPPORTED_PARAMETER,
    violation,
)

__all__ = [
    "EMPTY_ARRAY",
    "FORWARDED",
    "INVALID_TYPE",
    "INVALID_VALUE",
    "MAX_STOP_CHARS",
    "MISSING_REQUIRED_PARAMETER",
    "NAME",
    "ROLES",
    "TOOL_CHOICES",
    "UNKNOWN_PARAMETER",
    "UNSUPPORTED_PARAMETER",
    "EmbeddingRequest",
    "check_dimensions",
    "check_json_schema",
    "check_name",
    "embedding_model_name",
    "messages_from_openai",
    "model_name",
    "validate_call",
    "validate_embedding",
    "validate_messages",
    "validate_params",
    "violation",
]
