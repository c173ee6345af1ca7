"""Tool calls in a local model's output, in the Hermes / Qwen format, as OpenAI tool calls.

Models tuned for tools (Hermes, Qwen 2.5 and 3, and many others) answer a request whose prompt
lists tools either with text or with one or more blocks

    <tool_call>{"name": "get_weather", "arguments": {"city": "paris"}}</tool_call>

(whitespace around and between the blocks is allowed). Such a reply becomes OpenAI `tool_calls`
(ids "call_<hex>", type "function", the arguments as a JSON string) with empty content and
finish reason "tool_calls". Only a reply made of tool-call blocks alone counts: text around
them, or a block that is not a JSON object with a `name` among the offered tools and object
`arguments` (absent is `{}`, a string holding a JSON object is read) - a malformed call -
leaves the whole reply as plain text, as the model wrote it.
Nothing is parsed when the request offers no tools or sets `tool_choice` to "none"; a
`tool_choice` naming one function accepts calls of that function only. Nothing forces a call:
with `tool_choice` "required" (or a function named) a reply in text stays text.

`ToolCallSplitter` does the same for a stream: text passes through as it comes, unless the
reply begins (after whitespace) with "<tool_call>", in which case it is held back to the end of
the generation and then returned as tool calls or, malformed, as text.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_BLOCK = re.compile(
    rf"\s*{re.escape(TOOL_CALL_OPEN)}(.*?){re.escape(TOOL_CALL_CLOSE)}\s*", re.DOTALL
)


def callable_tools(params: dict[str, Any]) -> frozenset[str] | None:
    """The function names a reply may call: None when the request offers no tools or sets
    `tool_choice` "none" (then the reply is text, never parsed).

    A `tool_choice` naming a function ({"type": "function", "function": {"name": ...}})
    narrows the names to that one.
    """
    tools = params.get("tools")
    choice = params.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    names = frozenset(_tool_names(tools))
    if isinstance(choice, dict):
        function = choice.get("function")
        chosen = function.get("name") if isinstance(function, dict) else None
        names = names & {chosen} if isinstance(chosen, str) else names
    return names or None


def parse_tool_calls(text: str, names: frozenset[str]) -> list[dict[str, Any]] | None:
    """The OpenAI tool calls of a reply made of `<tool_call>` blocks only; None otherwise.

    Args:
        text: The whole reply.
        names: The functions it may call (see `callable_tools`).

    Returns:
        `[{"id", "type": "function", "function": {"name", "arguments"}}]`, or None when the
        reply is not tool calls alone, or a call is malformed (not a JSON object, a name not in
        `names`, arguments that are not an object).
    """
    calls: list[dict[str, Any]] = []
    position = 0
    while position < len(text):
        block = _BLOCK.match(text, position)
        if block is None:
            return None
        call = _call(block.group(1), names)
        if call is None:
            return None
        calls.append(call)
        position = block.end()
    return calls or None


class ToolCallSplitter:
    """Sorts a streamed reply into text, passed on at once, and tool calls, held to the end.

    Feed it each piece of text, then call `finish` once the generation ended.

    Args:
        names: The functions the reply may call (`callable_tools`); None passes all text on.
    """

    def __init__(self, names: frozenset[str] | None) -> None:
        self._names = names
        self._held = ""
        self._deciding = names is not None
        self._calling = False

    def feed(self, piece: str) -> str:
        """The text to pass on now ("" while the reply may still be a tool call)."""
        if not self._deciding:
            return piece
        self._held += piece
        start = self._held.lstrip()
        if start.startswith(TOOL_CALL_OPEN):
            self._calling = True
            return ""
        if self._calling or TOOL_CALL_OPEN.startswith(start):
            return ""
        self._deciding = False
        text, self._held = self._held, ""
        return text

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        """The text still held back and the tool calls: ("", calls) when the reply was tool
        calls, (text, None) otherwise (a malformed call is text)."""
        held, self._held = self._held, ""
        if self._calling and self._names is not None:
            calls = parse_tool_calls(held, self._names)
            if calls is not None:
                return "", calls
        return held, None


def _tool_names(tools: list[Any]) -> list[str]:
    """The function names of OpenAI tool definitions (others are skipped)."""
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            names.append(name)
    return names


def _call(body: str, names: frozenset[str]) -> dict[str, Any] | None:
    """The OpenAI tool call of one block's JSON, or None when it is malformed."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }
