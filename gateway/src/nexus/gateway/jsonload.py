"""JSON parsing that lets other threads run: the outer containers of a document are walked in
Python, each of their items parsed by the C scanner of the standard library.

`json.loads` parses a whole document in C, holding the GIL all the while: for an 8 MB body
that is half a second in which no other thread, the event loop's included, runs, wherever the
call is made. Here the top-level object and the arrays and objects directly in it are walked item
by item (the items are what grows: points, documents, messages), so the GIL can change hands
between items, at a cost of about a microsecond per item. The result, and the documents refused,
are those of `json.loads` (NaN and Infinity, which are not JSON, refused as `not_json` says).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json.decoder import JSONDecodeError
from typing import Any

# The C parts of the standard library's decoder (typeshed leaves them out).
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]

DEPTH = 2
"""Containers nested less deeply than this are walked in Python; deeper ones parsed in C."""

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SPACES = frozenset(" \t\n\r")


class IncrementalLoader:
    """`loads(text)`, as `json.loads(text, parse_constant=parse_constant)` parses it.

    Args:
        parse_constant: Called for NaN, Infinity and -Infinity (json.loads' hook).
    """

    def __init__(self, parse_constant: Callable[[str], Any]) -> None:
        decoder = json.JSONDecoder(parse_constant=parse_constant)
        self._scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]

    def loads(self, data: bytes | str) -> Any:
        """The JSON value of `data` (UTF-8, -16 or -32 bytes, as json.loads detects).

        Raises:
            ValueError: `data` is not one JSON value (`json.JSONDecodeError`, or what
                `parse_constant` raises).
        """
        text = data if isinstance(data, str) else data.decode(json.detect_encoding(data))
        if text.startswith("\ufeff"):
            raise JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value, end = self._value(text, _skip(text, 0), 0)
        end = _skip(text, end)
        if end != len(text):
            raise JSONDecodeError("Extra data", text, end)
        return value

    def _value(self, text: str, index: int, depth: int) -> tuple[Any, int]:
        if depth < DEPTH:
            opener = text[index : index + 1]
            if opener == "{":
                return self._object(text, index + 1, depth + 1)
            if opener == "[":
                return self._array(text, index + 1, depth + 1)
        try:
            return self._scan(text, index)
        except StopIteration as stop:
            raise JSONDecodeError("Expecting value", text, stop.value) from None

    def _object(self, text: str, index: int, depth: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        index = _skip(text, index)
        if text[index : index + 1] == "}":
            return result, index + 1
        while True:
            if text[index : index + 1] != '"':
                raise JSONDecodeError(
                    "Expecting property name enclosed in double quotes", text, index
                )
            key, index = scanstring(text, index + 1)
            index = _skip(text, index)
            if text[index : index + 1] != ":":
                raise JSONDecodeError("Expecting ':' delimiter", text, index)
            result[key], index = self._value(text, _skip(text, index + 1), depth)
            index = _skip(text, index)
            separator = text[index : index + 1]
            if separator == "}":
                return result, index + 1
            if separator != ",":
                raise JSONDecodeError("Expecting ',' delimiter", text, index)
            index = _skip(text, index + 1)

    def _array(self, text: str, index: int, depth: int) -> tuple[list[Any], int]:
        result: list[Any] = []
        index = _skip(text, index)
        if text[index : index + 1] == "]":
            return result, index + 1
        while True:
            item, index = self._value(text, index, depth)
            result.append(item)
            index = _skip(text, index)
            separator = text[index : index + 1]
            if separator == "]":
                return result, index + 1
            if separator != ",":
                raise JSONDecodeError("Expecting ',' delimiter", text, index)
            index = _skip(text, index + 1)


def _skip(text: str, index: int) -> int:
    """The index of the first character from `index` on that is not JSON whitespace."""
    if index < len(text) and text[index] not in _SPACES:  # compact JSON: no regex needed
        return index
    return _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]
