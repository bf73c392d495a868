"""The reference parser: h11, made as strict as llhttp where h11 is lenient.

h11 accepts what llhttp refuses (bare LF line ends, obs-fold, repeated identical Content-Length
headers, any method, control characters in values, free-form chunk lines) and refuses what llhttp
takes (several spaces in the request line). A proxy must not accept what its other parser
refuses, so a request head is held back until complete and checked by ``strict`` as llhttp
would check it, and a chunked body, a request's or a response's, goes through
``strict.ChunkFramer``; h11 then parses a head and a framing both parsers take. Response heads get
the byte prechecks below. h11 keeps one message per ``Connection``; a fresh one is made per
message, since we only use it to parse.
"""

from __future__ import annotations

import re
from typing import Final

import h11

from meshns.dataplane.http1.head import (
    CTL,
    HTTP_VERSIONS,
    MAX_HEAD_BYTES,
    ParseError,
    request_head,
    response_head,
)
from meshns.dataplane.http1.parser import RequestSink, ResponseSink
from meshns.dataplane.http1.strict import ChunkFramer, HeadCollector

_CL_LINE: Final = re.compile(rb"\r\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)


def _status_line_start(buf: bytes) -> None:
    # h11 waits for a whole head before it looks at the status line; llhttp refuses at the first
    # byte that cannot begin "HTTP/". Refuse as early, so an app that answers in another protocol
    # (an SSH banner) is a 502 now, not a request waiting for a blank line that never comes.
    n = min(len(buf), 5)
    if buf[:n] != b"HTTP/"[:n]:
        raise ParseError(502, "not an HTTP response")


def _precheck(buf: bytes) -> None:
    _status_line_start(buf)
    end = buf.find(b"\r\n\r\n")
    region = buf if end < 0 else buf[:end + 4]
    if end < 0 and region.endswith(b"\r"):
        region = region[:-1]  # the LF may be in the next read
    rest = region.replace(b"\r\n", b"")
    if b"\n" in rest or b"\r" in rest:
        raise ParseError(400, "bare CR or LF in head")
    if CTL.search(rest) is not None:  # h11 takes them in a response's field values, llhttp does not
        raise ParseError(400, "control character in head")
    if b"\r\n " in region or b"\r\n\t" in region:
        raise ParseError(400, "obsolete line folding")
    lengths = _CL_LINE.findall(region)
    if len(lengths) > 1 or any(b"," in v for v in lengths):
        raise ParseError(400, "duplicate Content-Length")


def _status(exc: h11.RemoteProtocolError, default: int) -> ParseError:
    hint = exc.error_status_hint
    return ParseError(hint if hint in (400, 431, 501) and default == 400 else default, str(exc))


class RequestParserH11:
    def __init__(self, sink: RequestSink) -> None:
        self._sink = sink
        self._head = HeadCollector()
        self._conn: h11.Connection | None = None  # the message past its head
        self._framer: ChunkFramer | None = None
        self._keep_alive = True
        self._closed = False  # a request closing the connection ended: the rest is ignored
        self._fields: list[tuple[bytes, bytes]] = []  # the head's fields as on the wire

    def feed(self, data: bytes) -> bytes | None:
        pending = data
        while not self._closed:
            conn = self._conn
            if conn is None:
                rest = self._take_head(pending)
                if rest is None:
                    return None
                pending = rest
                done = self._drain()
            elif not pending:
                return None
            elif self._framer is not None:
                out, after = self._framer.feed(pending)
                pending = b"" if after is None else after
                if out:
                    conn.receive_data(out)
                done = self._drain()
                if done != (after is not None):
                    raise ParseError(400, "chunked framing out of step")  # cannot happen
            else:
                conn.receive_data(pending)
                done = self._drain()
                pending = bytes(conn.trailing_data[0]) if done else b""
            if not done:
                continue
            assert self._conn is not None
            upgrade = self._conn.their_state is h11._state.MIGHT_SWITCH_PROTOCOL
            self._conn = None
            self._framer = None
            if upgrade:
                return pending
            if not self._keep_alive:
                # RFC 9112 9.6: no further request on a connection the client closes (llhttp
                # refuses the bytes; the connection closes after the response either way).
                self._closed = True
            elif not pending:
                return None
        return None

    def _take_head(self, data: bytes) -> bytes | None:
        """Collect the head; once complete, hand it to a fresh h11 connection and return the
        bytes after it (None while the head is still coming)."""
        if not self._head:
            # RFC 9112 2.2: empty lines before a request line are ignored. llhttp skips any CR
            # and LF there; h11 refuses them, so they are dropped before h11 sees them.
            data = data.lstrip(b"\r\n")
            if not data:
                return None
            self._sink.on_request_begin()
        got = self._head.add(data)
        if got is None:
            return None
        head, self._fields, rest = got
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._conn.receive_data(head)
        return rest

    def _drain(self) -> bool:
        """Hand h11's events to the sink; True once the message ended."""
        conn = self._conn
        assert conn is not None
        sink = self._sink
        try:
            while True:
                ev = conn.next_event()
                if isinstance(ev, h11.Request):
                    minor = 0 if ev.http_version == b"1.0" else 1
                    # The fields as on the wire (h11 lowercases some values, Transfer-Encoding's).
                    head = request_head(ev.method, ev.target, minor, self._fields)
                    self._keep_alive = head.keep_alive
                    if head.chunked:
                        self._framer = ChunkFramer()
                    sink.on_request_head(head)
                elif isinstance(ev, h11.Data):
                    sink.on_request_body(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    sink.on_request_complete()
                    return True
                else:  # NEED_DATA, PAUSED or ConnectionClosed
                    return False
        except h11.RemoteProtocolError as exc:
            raise _status(exc, 400) from None


class ResponseParserH11:
    """h11 gets a response's head alone, once its empty line came (the bytes of a head still
    coming are handed on as they arrive, so h11 bounds its size); what follows the head goes to
    h11 as is, or through a ``ChunkFramer`` when the body is chunked, so h11 never frames a chunk
    line llhttp would refuse."""

    def __init__(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> None:
        self._sink = sink
        self._request = (head_request, upgrade)
        self._conn = self._connection()
        self._head_buf: bytes | None = b""  # the head coming in; None once it is through
        self._fed = 0  # how much of _head_buf h11 has
        self._leading = True  # no byte of a status line yet: CR and LF are skipped, as llhttp does
        self._framer: ChunkFramer | None = None
        self._done = False

    def _connection(self) -> h11.Connection:
        """An h11 client that has sent the request this response answers."""
        head_request, upgrade = self._request
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        headers = [(b"host", b"upstream")]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"x")]
        conn.send(h11.Request(method=b"HEAD" if head_request else b"GET", target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        return conn

    def rearm(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> bool:
        return False  # h11's client state is per request; the reference parser stays simple

    def feed(self, data: bytes) -> bytes | None:
        pending = data
        while not self._done:
            if self._head_buf is None:
                return self._feed_body(pending)
            after = self._take_head(pending)
            if after is None:
                return None
            switched = self._drain()  # the head's event (and a body that needs no byte)
            if switched is not None:
                return switched + after
            if self._done and after:
                # As llhttp's adapter: the response stands, the connection is not pooled.
                raise ParseError(502, "bytes after the response")
            if not after:
                return None
            pending = after
        return None

    def feed_eof(self) -> None:
        if self._done:
            return
        self._conn.receive_data(b"")
        self._drain()
        if not self._done:
            raise ParseError(502, "upstream closed mid-response")

    def _take_head(self, data: bytes) -> bytes | None:
        """Collect a head: None while it is still coming, else the bytes after it (h11 then has
        the head and nothing more)."""
        if self._leading:
            data = data.lstrip(b"\r\n")
            if not data:
                return None
            self._leading = False
        assert self._head_buf is not None
        buf = self._head_buf + data
        _precheck(buf)
        end = buf.find(b"\r\n\r\n")
        cut = len(buf) if end < 0 else end + 4
        self._conn.receive_data(buf[self._fed:cut])
        self._head_buf, self._fed = buf, cut
        if end < 0:
            self._drain()  # h11 refuses a head past its size bound here
            return None
        return buf[cut:]

    def _feed_body(self, data: bytes) -> bytes | None:
        if not data:
            return None
        framer = self._framer
        if framer is None:
            self._conn.receive_data(data)
            return self._drain()
        out, after = framer.feed(data)
        if out:
            self._conn.receive_data(out)
        self._drain()
        if after is not None:
            if not self._done:
                raise ParseError(502, "chunked framing out of step")  # cannot happen
            if after:
                raise ParseError(502, "bytes after the response")
        return None

    def _next_head(self) -> None:
        """After a 1xx the final head follows: a new h11 client (the same request) takes it."""
        self._conn = self._connection()
        self._leading = True
        self._head_buf, self._fed = b"", 0

    def _drain(self) -> bytes | None:
        sink = self._sink
        try:
            while not self._done:
                ev = self._conn.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    return None
                if isinstance(ev, (h11.InformationalResponse, h11.Response)):
                    if ev.http_version not in HTTP_VERSIONS:  # h11 takes any HTTP/x.y
                        raise ParseError(502, "unsupported HTTP version")
                    minor = 0 if ev.http_version == b"1.0" else 1
                    head = response_head(ev.status_code, ev.reason, minor, list(ev.headers.raw_items()))
                    sink.on_response_head(head)
                    if ev.status_code == 101:
                        self._done = True
                        return bytes(self._conn.trailing_data[0])
                    if isinstance(ev, h11.InformationalResponse):
                        self._next_head()
                        return None
                    self._head_buf = None
                    if head.chunked and not self._request[0] and ev.status_code not in (204, 304):
                        self._framer = ChunkFramer(response=True)
                elif isinstance(ev, h11.Data):
                    sink.on_response_body(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    self._done = True
                    sink.on_response_complete()
                    if self._conn.trailing_data[0]:
                        # As llhttp's adapter: the response stands, the connection is not pooled.
                        raise ParseError(502, "bytes after the response")
                else:
                    return None
        except h11.RemoteProtocolError as exc:
            raise ParseError(502, str(exc)) from None
        return None
