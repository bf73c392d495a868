"""The hot-path parser: httptools (llhttp). Body callbacks are bound straight to the sink."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import httptools

from meshns.dataplane.http1.head import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Headers,
    ParseError,
    request_head,
    response_head,
)
from meshns.dataplane.http1.parser import RequestSink, ResponseSink
from meshns.dataplane.http1.strict import PENDING_LIMIT

_HEADER_OVERHEAD: Final = 4  # ": " and CRLF
_LINE_OVERHEAD: Final = 10  # two SP and "HTTP/1.x"
_VERSIONS: Final = ("1.0", "1.1")
# llhttp stops at the first bad byte with a message, not a status. Its Transfer-Encoding
# refusals are 501 like ours (head.request_head: Envoy's answer to a coding it cannot frame);
# its Content-Length + Transfer-Encoding refusals name both headers and stay 400.
_TE_ERRORS: Final = ("Invalid `Transfer-Encoding` header value", "Empty Transfer-Encoding",
                     "Request has invalid `Transfer-Encoding`")
# After a request that closes the connection, llhttp refuses any further byte; the connection
# is closed after the response anyway, so they are ignored (as the h11 adapter does).
_AFTER_CLOSE: Final = "Data after `Connection: close`"
# A body of at least this Content-Length is counted rather than parsed once the read carrying its
# head is through (RequestParserLL, ResponseParserLL): llhttp copies every body span it reports
# into a new bytes object. Below it a body mostly comes in the head's own read anyway.
COUNT_MIN: Final = 64 * 1024


def _parser_error(exc: httptools.HttpParserError, bad_status: int, in_head: bool) -> ParseError | None:
    text = str(exc)
    if bad_status == 400:
        if text == _AFTER_CLOSE:
            return None
        if text in _TE_ERRORS and in_head:  # in the trailers, a framing field at all is the fault
            return ParseError(501, text)
    return ParseError(bad_status, text)


def _too_large() -> ParseError:
    return ParseError(431, "request head too large")


class _Base:
    """Head collection shared by both directions, and the counting of a long body (COUNT_MIN):
    llhttp parses the read that carries its head with ``_count`` as the body callback, and
    ``_take_counted`` hands on the reads after it until the body's length is reached."""

    def __init__(self, sink_body: Callable[[bytes], None]) -> None:
        self._url = b""
        self._headers: Headers = []
        self._size = 0
        self._partial = 0
        self._in_head = True
        self._sink_body = sink_body
        self._body = sink_body  # llhttp's on_body goes here (see _count)
        self._left = 0  # a counted body's bytes still to come
        self._counting = False  # the read that carried its head is through: llhttp sees no more of it

    def on_body(self, data: bytes) -> None:
        self._body(data)

    def _count(self, data: bytes) -> None:
        """``_body`` while llhttp parses the read that carried a counted body's head."""
        self._left -= len(data)
        self._sink_body(data)

    def _take_counted(self, data: bytes) -> bytes | None:
        """Hand on one read of a counted body: None while the body goes on, else the bytes past
        its end (b"" when the read ended with it)."""
        left = self._left
        n = len(data)
        if n < left:
            self._left = left - n
            self._sink_body(data)
            return None
        self._left = 0
        self._counting = False
        self._sink_body(data if n == left else data[:left])
        return data[left:]

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._size = 0
        self._partial = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._size += len(url)
        if self._size > MAX_HEAD_BYTES:
            raise _too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a chunked trailer field: dropped (trailers are not forwarded)
        # llhttp keeps trailing whitespace in the value; it is not part of it (RFC 9110 5.5).
        self._headers.append((name, value.rstrip(b" \t")))
        self._partial = 0
        self._size += len(name) + len(value) + _HEADER_OVERHEAD
        if self._size > MAX_HEAD_BYTES:
            raise _too_large()
        if len(self._headers) > MAX_HEADERS:
            raise ParseError(431, "too many headers")

    def _feed(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, data: bytes,
              bad_status: int) -> bytes | None:
        """Feed llhttp; returns the bytes after an upgrade's head, maps its errors to ParseError."""
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return data[exc.args[0]:]
        except httptools.HttpParserCallbackError as exc:
            raise _unwrap(exc) from None
        except httptools.HttpParserError as exc:
            err = _parser_error(exc, bad_status, self._in_head)
            if err is None:
                return None
            raise err from None
        self._check_pending_head(len(data))
        return None

    def _check_pending_head(self, data_len: int) -> None:
        # httptools keeps a partial header line in its own buffer until the line ends; bound it
        # by the bytes fed since the last whole header. The count may include a feed's bytes
        # that whole headers already counted, never more than one head's worth, so a head within
        # the limit is never refused here (the exact limit is checked per header above).
        if self._in_head:
            self._partial += data_len
            if self._size + self._partial > PENDING_LIMIT:
                raise _too_large()


def _unwrap(exc: httptools.HttpParserCallbackError) -> BaseException:
    ctx = exc.__context__
    return ctx if ctx is not None else exc


class RequestParserLL(_Base):
    """A long Content-Length body is counted past the read that carried its head, as in
    ResponseParserLL. llhttp is then mid-body for good, so what follows the body on the
    connection (a pipelined request) goes to a new llhttp parser; after a request that closes the
    connection nothing more is parsed (llhttp refuses such bytes, see _AFTER_CLOSE)."""

    def __init__(self, sink: RequestSink) -> None:
        super().__init__(sink.on_request_body)
        self._sink = sink
        self.on_message_complete = sink.on_request_complete  # llhttp calls the sink directly
        self._keep_alive = True  # the request being parsed lets the connection go on
        self._closed = False  # a counted request closed the connection: nothing after it is parsed
        self._p = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._sink.on_request_begin()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_REQUEST_LINE:  # before the head's own limit: 414 names the cause
            raise ParseError(414, "request line too long")
        self._size += len(url)

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._p
        version = p.get_http_version()
        if version not in _VERSIONS:  # llhttp takes HTTP/0.9 and HTTP/2.0 request lines
            raise ParseError(400, "unsupported HTTP version")
        method = p.get_method()
        if len(method) + len(self._url) + _LINE_OVERHEAD > MAX_REQUEST_LINE:
            raise ParseError(414, "request line too long")
        minor = 0 if version == "1.0" else 1
        url, headers = self._url, self._headers
        # Not kept by the parser: an idle keep-alive connection holds its parser until the next request.
        self._url = b""
        self._headers = []
        head = request_head(method, url, minor, headers)
        self._sink.on_request_head(head)
        self._keep_alive = head.keep_alive
        if (head.content_length is not None and head.content_length >= COUNT_MIN and not head.upgrade
                and method != b"CONNECT"):
            self._left = head.content_length
            self._body = self._count
        else:
            self._body = self._sink_body

    def feed(self, data: bytes) -> bytes | None:
        if self._counting:
            return self._counted(data)
        if self._closed:
            return None
        rest = self._feed(self._p, data, 400)
        if self._left:  # llhttp completes a body only once it all came (_count counts it down)
            self._counting = True
        return rest

    def _counted(self, data: bytes) -> bytes | None:
        rest = self._take_counted(data)
        if rest is None:
            return None
        if self._keep_alive:
            self._p = httptools.HttpRequestParser(self)  # llhttp stays mid-body: a new one for what follows
        else:
            self._closed = True
        self._sink.on_request_complete()
        return None if not rest or self._closed else self.feed(rest)


class ResponseParserLL(_Base):
    """One per upstream connection when it can be: after a response that llhttp itself completed
    (not a HEAD answer, not close-delimited, not an upgrade) and whose bytes ended with it, the
    connection's next exchange re-arms it (``rearm``) instead of building a new llhttp parser
    (a new one costs several microseconds per request).

    A long Content-Length body is counted, not parsed: from the first read after its head, the
    rest of it goes to the sink as the bytes that were read (llhttp would hand on a copy of each
    span), and the response completes when exactly that many arrived. On the TLS hops, where
    splice(2) cannot move a body, this is one copy of every body byte less per sidecar. Bytes past
    the body are refused as llhttp refuses them; llhttp never saw the body, so such a parser is
    not re-armed."""

    def __init__(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> None:
        self._p = httptools.HttpResponseParser(self)
        self.reusable = False
        self._arm(sink, head_request)

    def _arm(self, sink: ResponseSink, head_request: bool) -> None:
        _Base.__init__(self, sink.on_response_body)
        self._sink = sink
        self._no_body = head_request
        self._done = False
        self._complete = False  # llhttp saw the end of the message (on_message_complete)
        self._info = False
        self._close_delimited = False
        if head_request:
            self._body = self._past_head

    def rearm(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> bool:
        """Take the next response on the same connection; False when a new parser is needed."""
        if not self.reusable:
            return False
        self.reusable = False
        self._arm(sink, head_request)
        return True

    def _past_head(self, data: bytes) -> None:
        # llhttp does not know the request was HEAD and takes what follows the head as its body;
        # it is a response nobody asked for, refused as bytes after any other response are.
        raise ParseError(502, "bytes after the response")

    def on_message_begin(self) -> None:
        if self._done:
            raise ParseError(502, "bytes after the response")
        super().on_message_begin()

    def on_status(self, reason: bytes) -> None:
        self._url += reason

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._p
        version = p.get_http_version()
        if version not in _VERSIONS:  # llhttp takes HTTP/0.9 and HTTP/2.0 status lines too
            raise ParseError(502, "unsupported HTTP version")
        minor = 0 if version == "1.0" else 1
        status = p.get_status_code()
        head = response_head(status, self._url, minor, self._headers)
        self._info = 100 <= status < 200
        # A 1xx is never the response: an EOF after one is a close mid-response.
        self._close_delimited = (not self._info and not head.keep_alive and head.content_length is None
                                 and not head.chunked)
        self._sink.on_response_head(head)
        if self._no_body and not self._info:
            # llhttp does not know the request was HEAD; the head is the whole response.
            self._done = True
            self._sink.on_response_complete()
        elif (head.content_length is not None and head.content_length >= COUNT_MIN
              and status >= 200 and status not in (204, 304)):
            self._left = head.content_length
            self._body = self._count

    def on_message_complete(self) -> None:
        if self._info:
            self._info = False
            return
        if not self._done:
            self._done = True
            self._complete = True
            self._sink.on_response_complete()

    def feed(self, data: bytes) -> bytes | None:
        if self._done:
            return None
        if self._counting:
            self._counted(data)
            return None
        rest = self._feed(self._p, data, 502)  # a malformed response is the upstream's fault: 502
        if self._left and not self._done:
            self._counting = True
        # Reusable only once this feed is over: bytes after the response in the same read went
        # through the old sink (and failed the connection) before anyone can re-arm it.
        if self._complete and rest is None:
            self.reusable = True
        return rest

    def _counted(self, data: bytes) -> None:
        rest = self._take_counted(data)
        if rest is None:
            return
        self._done = True
        self._sink.on_response_complete()
        if rest:
            raise ParseError(502, "bytes after the response")

    def feed_eof(self) -> None:
        if self._done:
            return
        if not self._in_head and self._close_delimited:
            self._done = True
            self._sink.on_response_complete()
            return
        raise ParseError(502, "upstream closed mid-response")
