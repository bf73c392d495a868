"""One parser interface, two implementations: httptools (llhttp, the hot path) and h11 (the
reference), selected by the ``http_parser`` config key as uvicorn's ``--http auto|h11|httptools``.

A parser is fed raw bytes and calls its sink: the head once (after ``head.request_head`` /
``head.response_head`` checked it), body chunks as they come (the parser's own bytes, no copies of
ours), and completion. ``feed`` returns None, or the raw bytes that follow a protocol switch (an
upgrade request, a 101 response): from there on the connection is not HTTP. Malformed input raises
``ParseError`` carrying the status to answer. The differential test feeds both the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshns.dataplane.http1.head import RequestHead, ResponseHead


class RequestSink(Protocol):
    def on_request_begin(self) -> None:
        """The first byte of a request head arrived (the request-headers timeout starts)."""

    def on_request_head(self, head: RequestHead) -> None: ...

    def on_request_body(self, data: bytes) -> None: ...

    def on_request_complete(self) -> None: ...


class ResponseSink(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...

    def on_response_body(self, data: bytes) -> None: ...

    def on_response_complete(self) -> None: ...


class RequestParser(Protocol):
    def feed(self, data: bytes) -> bytes | None: ...


class ResponseParser(Protocol):
    def feed(self, data: bytes) -> bytes | None: ...

    def feed_eof(self) -> None:
        """The upstream closed: completes a close-delimited body, else raises ParseError."""

    def rearm(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> bool:
        """Parse the connection's next response for ``sink``, if this parser can (it finished
        the last one cleanly); False: make a new one."""


@dataclass(frozen=True)
class ParserKit:
    name: str
    request: Callable[[RequestSink], RequestParser]
    # (sink, the request was HEAD, the request asked for an upgrade)
    response: Callable[[ResponseSink, bool, bool], ResponseParser]


def parser_kit(name: str) -> ParserKit:
    """``auto``: httptools when importable, else h11."""
    if name in ("auto", "httptools"):
        try:
            from meshns.dataplane.http1 import parse_httptools  # noqa: PLC0415
        except ImportError:
            if name == "httptools":
                raise
        else:
            return ParserKit("httptools", parse_httptools.RequestParserLL, parse_httptools.ResponseParserLL)
    from meshns.dataplane.http1 import parse_h11  # noqa: PLC0415

    return ParserKit("h11", parse_h11.RequestParserH11, parse_h11.ResponseParserH11)
