"""The one naming rule of the platform, and the form of a version number.

Everything a user names and later refers to by name (a model, an alias, a detector, a metric
source, a search collection, a service) follows one rule: 1 to 64 ASCII letters, digits, `_` and
`-`, starting with a letter or a digit. Such a name is safe as a URL path segment, a NATS subject
token and a KV key token. Every service checks names with `check_name`, and the OpenAPI document
shows the same pattern (`nexus.common.rules`), so the rule is written once.
"""

from __future__ import annotations

import re

from nexus.common.errors import InvalidArgument

NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
"""A name, as a regular expression (match it whole)."""
NAME_RULE = "1-64 letters, digits, '_' or '-', starting with a letter or digit"
"""The rule in words, for error messages."""

VERSION_PATTERN = "[1-9][0-9]{0,17}"
"""A version number ("1", "2", ...), as a regular expression (match it whole)."""

_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


def is_name(value: object) -> bool:
    """Whether `value` is a valid name."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(value: str, field: str) -> str:
    """Returns `value` when it is a valid name.

    Args:
        value: The name.
        field: The request field it came from, for the error.

    Raises:
        InvalidArgument: Otherwise, naming `field`.
    """
    if not is_name(value):
        raise InvalidArgument.for_field(field, f"must be {NAME_RULE}, got {value!r}")
    return value


def check_version(value: str, field: str = "version") -> str:
    """Returns `value` when it is a version number.

    Raises:
        InvalidArgument: Otherwise, naming `field`.
    """
    if not (isinstance(value, str) and _VERSION.fullmatch(value)):
        raise InvalidArgument.for_field(field, f"must be a version number, got {value!r}")
    return value
