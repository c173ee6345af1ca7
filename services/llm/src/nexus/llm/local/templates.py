"""Chat messages into the text a local model reads: its own chat template, or a plain fallback.

Messages are OpenAI-shaped (see `nexus.llm.types.Message`). Content given as a list of parts is
joined from its text parts: local models here read text only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nexus.common.errors import InvalidArgument
from nexus.llm.types import Message

FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
"""The template of tokenizers that ship none: `role: content` lines, then `assistant:`."""

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
    return normalized


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
