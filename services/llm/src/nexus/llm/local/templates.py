"""Chat messages into the text a local model reads: its own chat template, or a plain fallback.

Messages are OpenAI-shaped (see `nexus.llm.types.Message`). Content given as a list of parts is
joined from its text parts: local models here read text only. An assistant message's
`tool_calls` keep their OpenAI shape, except that arguments given as a JSON string of an object
become that object, as Hugging Face chat templates expect (they write it with `tojson`); `tool`
messages pass as they are (role, content, tool_call_id).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nexus.common.errors import InvalidArgument
from nexus.llm.types import Message

FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% if tools %}system: You may call these tools: <tools>{{ tools | tojson }}</tools>. "
    'To call one, answer <tool_call>{"name": <name>, "arguments": <object>}</tool_call>.\n'
    "{% endif %}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "<tool_call>{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']}"
    " | tojson }}</tool_call>"
    "{% endfor %}"
    "{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
"""The template of tokenizers that ship none: `role: content` lines, then `assistant:`. Tools,
when offered, come first in a system line, and an assistant's tool calls follow its content in
the Hermes format (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`), which is what
the provider reads back as tool calls."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def normalize_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Copies of `messages` whose content is a string, ready for a chat template.

    Raises:
        InvalidArgument: No messages, a message that is not an object, an unknown role, or
            content that is neither text nor a list of text parts.
    """
    if not messages:
        raise InvalidArgument.for_field("messages", "must not be empty")
    return [_normalize(index, message) for index, message in enumerate(messages)]


def _normalize(index: int, message: Message) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InvalidArgument.for_field(f"messages[{index}]", "must be an object")
    role = message.get("role")
    if role not in ROLES:
        raise InvalidArgument.for_field(
            f"messages[{index}].role", f"must be one of {', '.join(sorted(ROLES))}"
        )
    normalized = dict(message)
    normalized["content"] = _text(index, message.get("content"))
    if message.get("tool_calls") is not None:
        normalized["tool_calls"] = _tool_calls(index, message["tool_calls"])
    return normalized


def _tool_calls(index: int, calls: object) -> list[dict[str, Any]]:
    """Copies of an assistant's tool calls whose JSON-string arguments are objects."""
    if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
        raise InvalidArgument.for_field(
            f"messages[{index}].tool_calls", "must be a list of objects"
        )
    out = []
    for call in calls:
        function = call.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function = {**function, "arguments": _arguments(function["arguments"])}
            call = {**call, "function": function}
        out.append(call)
    return out


def _arguments(text: str) -> object:
    """A call's arguments as an object when the string holds one (else the string)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def _text(index: int, content: object) -> str:
    """The text of a message's content: a string, None, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidArgument.for_field(
                    f"messages[{index}].content[{part_index}]",
                    "local models read text parts only",
                )
            text = part.get("text", "")
            if not isinstance(text, str):
                raise InvalidArgument.for_field(
                    f"messages[{index}].content[{part_index}].text", "must be a string"
                )
            texts.append(text)
        return "\n".join(texts)
    raise InvalidArgument.for_field(
        f"messages[{index}].content", "must be a string or a list of text parts"
    )
