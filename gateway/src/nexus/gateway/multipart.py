"""multipart/form-data request bodies, parsed as they stream in (ADR 0030).

python-multipart's parser is fed each chunk as it arrives; a part's bytes are kept once, in
memory, and joined when the part ends (no spooling to temporary files, no second copy of the
body). Limits are checked as the bytes come: the whole body (`max_body_bytes`), each part
(`max_part_bytes`) and the number of parts (`max_form_parts`), each a 413. What the parts mean
(which request field each fills) is `nexus.gateway.transcode.build_form_request`'s business.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from nexus.common.errors import REQUEST_TOO_LARGE
from nexus.gateway.errors import GatewayError

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks

FORM_DATA = "multipart/form-data"
_OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class FormLimits:
    """How large a form may be.

    Attributes:
        body_bytes: The whole body, boundaries and part headers included.
        part_bytes: One part's content.
        parts: Number of parts.
    """

    body_bytes: int
    part_bytes: int
    parts: int


@dataclass(frozen=True)
class Part:
    """One part of a form.

    Attributes:
        name: The `name` of its Content-Disposition: the field it fills.
        data: Its content.
        filename: The `filename` of its Content-Disposition; None for a text part.
        content_type: Its Content-Type ("application/octet-stream" for a file without one,
            "text/plain" for a text part without one).
    """

    name: str
    data: bytes
    filename: str | None
    content_type: str

    @property
    def is_file(self) -> bool:
        """Whether the client sent it as a file (it has a filename)."""
        return self.filename is not None

    def text(self) -> str:
        """The content as text (UTF-8).

        Raises:
            GatewayError: 400 naming the part when it is not UTF-8.
        """
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise GatewayError.bad_field(self.name, "a text part must be UTF-8") from err


def boundary_of(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data; boundary=...` Content-Type.

    Raises:
        GatewayError: 400 when there is none.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise GatewayError.bad_field("", f"{FORM_DATA} needs a boundary parameter")
    return boundary


async def read_form(
    stream: AsyncIterable[bytes], boundary: bytes, limits: FormLimits, declared_length: str = ""
) -> list[Part]:
    """The parts of a multipart body, parsed as it streams.

    Raises:
        GatewayError: 413 beyond a limit (as soon as it is known), 400 for a malformed body or
            a part without a name.
    """
    reader = _Reader(limits)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        async for chunk in bounded(stream, limits.body_bytes, declared_length):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise GatewayError.bad_field("", f"the body is not valid {FORM_DATA}: {err}") from err
    if not reader.ended:
        raise GatewayError.bad_field("", f"the {FORM_DATA} body ends before its closing boundary")
    return reader.parts


async def bounded(
    stream: AsyncIterable[bytes], limit: int, declared_length: str = ""
) -> AsyncIterator[bytes]:
    """The chunks of a request body, refused with 413 as soon as it is known to exceed `limit`
    bytes: from Content-Length first, then by counting (a chunked body has no length, and a
    length may lie)."""
    if declared_length.isdigit() and int(declared_length) > limit:
        raise body_too_large(limit)
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        yield chunk


def body_too_large(limit: int) -> GatewayError:
    """413: the body is over the limit."""
    return too_large(f"the request body is larger than the limit of {limit} bytes")


def too_large(message: str) -> GatewayError:
    """413 REQUEST_TOO_LARGE."""
    return GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason=REQUEST_TOO_LARGE)


class _Reader:
    """python-multipart's callbacks: collects the parts, checking the per-part limits."""

    def __init__(self, limits: FormLimits) -> None:
        self.limits = limits
        self.parts: list[Part] = []
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._chunks: list[bytes] = []
        self._size = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finish,
        }

    def _begin(self) -> None:
        if len(self.parts) >= self.limits.parts:
            raise too_large(f"the form has more than {self.limits.parts} parts")
        self._headers, self._chunks, self._size = {}, [], 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._size > self.limits.part_bytes:
            name = self._name()
            raise too_large(
                f"{name}: the part is larger than the limit of {self.limits.part_bytes} bytes"
            )
        self._chunks.append(data[start:end])

    def _end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = options.get(b"filename")
        declared = self._headers.get(b"content-type", b"").decode("latin-1")
        default = _OCTET_STREAM if filename is not None else "text/plain"
        self.parts.append(
            Part(
                name=self._name(),
                data=b"".join(self._chunks),
                filename=None if filename is None else filename.decode("utf-8", "replace"),
                content_type=declared or default,
            )
        )
        self._chunks = []

    def _name(self) -> str:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if not name:
            raise GatewayError.bad_field("", "a form part has no name (Content-Disposition)")
        return name.decode("utf-8", "replace")

    def _finish(self) -> None:
        self.ended = True
