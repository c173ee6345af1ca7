"""Path templates of `google.api.http` rules, compiled to regular expressions.

Grammar (from google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

Templates match the raw (still percent-encoded) request path, so that an encoded "/" inside a
single-segment variable does not split it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_VARIABLE = re.compile(r"^\{(?P<field>[A-Za-z_][\w.]*)(?:=(?P<pattern>.+))?\}$")


class TemplateError(ValueError):
    """A path template that does not follow the grammar."""


@dataclass(frozen=True)
class PathVariable:
    """A `{field}` or `{field=pattern}` of a template.

    Attributes:
        field_path: The request field it fills, such as ("model", "name") for `{model.name}`.
        group: Name of its regular-expression group.
        multi_segment: Whether its value may hold "/" (a pattern with several segments or `**`).
    """

    field_path: tuple[str, ...]
    group: str
    multi_segment: bool

    @property
    def name(self) -> str:
        """The dotted field path, as written in the template."""
        return ".".join(self.field_path)

    @property
    def openapi_name(self) -> str:
        """The name of its OpenAPI path parameter: the field path joined by "_", since clients
        that fill a path by name (Python's `str.format`, schemathesis) cannot take a dotted one."""
        return openapi_parameter(self.name)


@dataclass(frozen=True)
class PathTemplate:
    """One compiled template.

    Attributes:
        template: The template as written in the proto.
        regex: Matches a raw request path in full.
        variables: The variables, in order.
        literals: Number of literal segments and verbs: the more, the more specific the template.
    """

    template: str
    regex: re.Pattern[str]
    variables: tuple[PathVariable, ...]
    literals: int

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        """Compiles a template.

        Raises:
            TemplateError: When the template does not follow the grammar.
        """
        if not template.startswith("/"):
            raise TemplateError(f"path template {template!r} does not start with '/'")
        segments, verb = _split(template[1:])
        compiler = _Compiler()
        pattern = "/" + "/".join(compiler.segment(s) for s in segments)
        if verb:
            pattern += ":" + re.escape(verb)
        regex = re.compile(f"^{pattern}$")
        # A verb is literal too: ".../{name=*/operations/*}:watch" is tried before
        # ".../{name=*/operations/*}", whose last variable would match "<id>:watch" as well.
        literals = compiler.literals + (1 if verb else 0)
        return cls(template, regex, tuple(compiler.variables), literals)

    def match(self, raw_path: str) -> dict[tuple[str, ...], str] | None:
        """The decoded values of the variables when `raw_path` matches, else None."""
        found = self.regex.match(raw_path)
        if found is None:
            return None
        return {v.field_path: _decode(found[v.group], v.multi_segment) for v in self.variables}

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: `{field=pattern}` becomes `{field}`."""
        segments, verb = _split(self.template[1:])
        rendered = "/" + "/".join(_openapi_segment(s) for s in segments)
        return f"{rendered}:{verb}" if verb else rendered


class _Compiler:
    """Turns segments into regular-expression text, collecting the variables."""

    def __init__(self) -> None:
        self.variables: list[PathVariable] = []
        self.literals = 0

    def segment(self, segment: str) -> str:
        if segment.startswith("{"):
            return self._variable(segment)
        if segment == "*":
            return "[^/]+"
        if segment == "**":
            return ".+"
        if not segment or any(c in segment for c in "{}*"):
            raise TemplateError(f"bad path segment {segment!r}")
        self.literals += 1
        return re.escape(segment)

    def _variable(self, segment: str) -> str:
        parsed = _VARIABLE.match(segment)
        if parsed is None:
            raise TemplateError(f"bad path variable {segment!r}")
        sub = (parsed["pattern"] or "*").split("/")
        if any(s.startswith("{") for s in sub):
            raise TemplateError(f"nested variable in {segment!r}")
        group = f"v{len(self.variables)}"
        multi = len(sub) > 1 or "**" in sub
        self.variables.append(PathVariable(tuple(parsed["field"].split(".")), group, multi))
        return f"(?P<{group}>" + "/".join(self.segment(s) for s in sub) + ")"


def _split(path: str) -> tuple[list[str], str]:
    """Splits a template (without its leading "/") into segments and its verb.

    A "/" or ":" inside braces belongs to a variable's pattern, so braces are tracked.
    """
    segments, current, depth, verb = [], "", 0, ""
    for index, char in enumerate(path):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0 and char == "/":
            segments.append(current)
            current = ""
        elif depth == 0 and char == ":":
            verb = path[index + 1 :]
            break
        else:
            current += char
    segments.append(current)
    if depth != 0 or (verb and not re.fullmatch(r"[\w.\-~]+", verb)):
        raise TemplateError(f"bad path template /{path}")
    return segments, verb


def openapi_parameter(field: str) -> str:
    """The OpenAPI path parameter of a template's dotted `{field}`."""
    return field.replace(".", "_")


def _openapi_segment(segment: str) -> str:
    parsed = _VARIABLE.match(segment)
    return f"{{{openapi_parameter(parsed['field'])}}}" if parsed else segment


def _decode(value: str, multi_segment: bool) -> str:
    """Percent-decodes a variable's value; a multi-segment one keeps "%2F" (RFC 6570 reserved
    expansion, as google.api.http specifies)."""
    if multi_segment:
        value = re.sub("%2[Ff]", "%252F", value)
    return unquote(value)
