"""The reference parser: h11, made as strict as llhttp where h11 is lenient.

h11 accepts bare LF line ends, obs-fold and repeated identical Content-Length headers (merging
them); llhttp rejects all three, and a proxy must not accept what its other parser rejects, so the
head bytes are pre-checked here. h11 keeps one message per ``Connection``; a fresh one is made per
message (fed the previous one's trailing bytes), since we only use it to parse.
"""

from __future__ import annotations

import re
from typing import Final

import h11

from meshns.dataplane.http1.head import (
    MAX_HEAD_BYTES,
    ParseError,
    request_head,
    response_head,
)
from meshns.dataplane.http1.parser import RequestSink, ResponseSink

_CL_LINE: Final = re.compile(rb"\r\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)
_MAX_CHUNK: Final = 1 << 64  # llhttp's chunk size is a uint64
_VERSIONS: Final = (b"1.0", b"1.1")


def _precheck(buf: bytes) -> None:
    end = buf.find(b"\r\n\r\n")
    region = buf if end < 0 else buf[:end + 4]
    if end < 0 and region.endswith(b"\r"):
        region = region[:-1]  # the LF may be in the next read
    rest = region.replace(b"\r\n", b"")
    if b"\n" in rest or b"\r" in rest:
        raise ParseError(400, "bare CR or LF in head")
    if b"\r\n " in region or b"\r\n\t" in region:
        raise ParseError(400, "obsolete line folding")
    lengths = _CL_LINE.findall(region)
    if len(lengths) > 1 or any(b"," in v for v in lengths):
        raise ParseError(400, "duplicate Content-Length")


def _check_chunk(conn: h11.Connection, ev: h11.Data) -> None:
    # h11 takes any chunk size; llhttp refuses one that overflows 64 bits. Agree with llhttp.
    left = getattr(getattr(conn, "_reader", None), "_bytes_in_chunk", 0)
    if isinstance(left, int) and left + len(ev.data) >= _MAX_CHUNK:
        raise ParseError(400, "chunk size overflow")


def _status(exc: h11.RemoteProtocolError, default: int) -> ParseError:
    hint = exc.error_status_hint
    return ParseError(hint if hint in (400, 431, 501) and default == 400 else default, str(exc))


class RequestParserH11:
    def __init__(self, sink: RequestSink) -> None:
        self._sink = sink
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._head_buf: bytes | None = b""

    @staticmethod
    def _skip_empty_lines(pending: bytes) -> bytes:
        # RFC 9112 2.2: empty lines before a request line are ignored. llhttp skips any CR and LF
        # there; h11 rejects them, so they are dropped before h11 sees them.
        return pending.lstrip(b"\r\n")

    def feed(self, data: bytes) -> bytes | None:
        sink = self._sink
        pending = data
        while True:
            if self._head_buf == b"":
                pending = self._skip_empty_lines(pending)
                if not pending:
                    return None
            if self._head_buf is not None:
                self._head_buf += pending
                try:
                    _precheck(self._head_buf)
                except ParseError:
                    raise
            self._conn.receive_data(pending)
            pending = b""
            try:
                while True:
                    ev = self._conn.next_event()
                    if ev is h11.NEED_DATA:
                        if self._head_buf is not None and len(self._head_buf) > MAX_HEAD_BYTES:
                            raise ParseError(431, "request head too large")
                        return None
                    if isinstance(ev, h11.Request):
                        buf = self._head_buf or b""
                        if buf.find(b"\r\n\r\n") + 4 > MAX_HEAD_BYTES:
                            raise ParseError(431, "request head too large")
                        self._head_buf = None
                        if ev.http_version not in _VERSIONS:
                            raise ParseError(400, "unsupported HTTP version")
                        minor = 0 if ev.http_version == b"1.0" else 1
                        sink.on_request_head(request_head(ev.method, ev.target, minor,
                                                          list(ev.headers.raw_items())))
                    elif isinstance(ev, h11.Data):
                        _check_chunk(self._conn, ev)
                        sink.on_request_body(bytes(ev.data))
                    elif isinstance(ev, h11.EndOfMessage):
                        sink.on_request_complete()
                        break
                    else:  # PAUSED or ConnectionClosed
                        return None
            except h11.RemoteProtocolError as exc:
                raise _status(exc, 400) from None
            rest, _closed = self._conn.trailing_data
            if self._conn.their_state is h11._state.MIGHT_SWITCH_PROTOCOL:
                return bytes(rest)
            self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
            self._head_buf = b""
            pending = bytes(rest)
            if not pending:
                return None


class ResponseParserH11:
    def __init__(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> None:
        self._sink = sink
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        headers = [(b"host", b"upstream")]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"x")]
        self._conn.send(h11.Request(method=b"HEAD" if head_request else b"GET", target=b"/",
                                    headers=headers))
        self._conn.send(h11.EndOfMessage())
        self._head_buf: bytes | None = b""
        self._done = False

    def feed(self, data: bytes) -> bytes | None:
        if self._done:
            return None
        if self._head_buf is not None:
            self._head_buf += data
            _precheck(self._head_buf)
        self._conn.receive_data(data)
        return self._drain()

    def feed_eof(self) -> None:
        if self._done:
            return
        self._conn.receive_data(b"")
        self._drain()
        if not self._done:
            raise ParseError(502, "upstream closed mid-response")

    def _drain(self) -> bytes | None:
        sink = self._sink
        try:
            while not self._done:
                ev = self._conn.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    return None
                if isinstance(ev, (h11.InformationalResponse, h11.Response)):
                    self._head_buf = b"" if isinstance(ev, h11.InformationalResponse) else None
                    minor = 0 if ev.http_version == b"1.0" else 1
                    sink.on_response_head(response_head(ev.status_code, ev.reason, minor,
                                                        list(ev.headers.raw_items())))
                    if ev.status_code == 101:
                        self._done = True
                        return bytes(self._conn.trailing_data[0])
                elif isinstance(ev, h11.Data):
                    _check_chunk(self._conn, ev)
                    sink.on_response_body(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    self._done = True
                    sink.on_response_complete()
                else:
                    return None
        except h11.RemoteProtocolError as exc:
            raise ParseError(502, str(exc)) from None
        return None
