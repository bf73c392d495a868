"""Differential test of the two parser adapters: any input they disagree on is a smuggling risk.

The same bytes go to httptools (llhttp) and h11, whole and split into small pieces; both must
accept or reject alike and, when they accept, report the same heads, bodies and message ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshns.dataplane.http1.head import ParseError, RequestHead, ResponseHead
from meshns.dataplane.http1.parser import parser_kit

KITS = [parser_kit("h11"), parser_kit("httptools")]
assert [k.name for k in KITS] == ["h11", "httptools"]


@dataclass
class Recorder:
    events: list[Any] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def _flush(self) -> None:
        if self.body:
            self.events.append(("body", bytes(self.body)))
            self.body.clear()

    def on_request_begin(self) -> None:
        self.events.append("begin")

    def on_request_head(self, h: RequestHead) -> None:
        self.events.append(("head", h.method, h.target, h.minor, h.headers, h.content_length, h.chunked,
                            h.keep_alive, h.upgrade, h.expect_continue))

    def on_request_body(self, data: bytes) -> None:
        self.body += data

    def on_request_complete(self) -> None:
        self._flush()
        self.events.append("end")

    def on_response_head(self, h: ResponseHead) -> None:
        self.events.append(("rhead", h.status, h.reason, h.minor, h.headers, h.content_length, h.chunked,
                            h.keep_alive))

    on_response_body = on_request_body
    on_response_complete = on_request_complete


def run_request(kit_index: int, data: bytes, step: int) -> tuple[str, Any]:
    rec = Recorder()
    parser = KITS[kit_index].request(rec)
    try:
        for i in range(0, len(data), step):
            rest = parser.feed(data[i:i + step])
            if rest is not None:
                rec._flush()
                return "upgrade", (rec.events, rest + data[i + step:])
    except ParseError as exc:
        return "reject", exc.status
    rec._flush()
    return "ok", rec.events


def run_response(kit_index: int, data: bytes, step: int, head_request: bool, eof: bool) -> tuple[str, Any]:
    rec = Recorder()
    parser = KITS[kit_index].response(rec, head_request, False)
    try:
        for i in range(0, len(data), step):
            rest = parser.feed(data[i:i + step])
            if rest is not None:
                return "upgrade", (rec.events, rest + data[i + step:])
        if eof:
            parser.feed_eof()
    except ParseError:
        return "reject", None
    rec._flush()
    return "ok", rec.events


H = b"Host: r\r\n"
LONG = bytes(range(256)) * 300  # 76,800 bytes: over COUNT_MIN, so llhttp's adapter counts it
POST_LONG = b"POST /l HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(LONG) + LONG
REQUESTS = {
    "get": b"GET /a?b=c HTTP/1.1\r\nHost: r\r\nX-Mixed: Case\r\n\r\n",
    "post-cl": b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    "chunked": b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    # found by the fuzzer: h11 lowercases a Transfer-Encoding value, llhttp does not
    "te-mixed-case": b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunKed\r\n\r\n1\r\na\r\n0\r\n\r\n",
    # found by the fuzzer: llhttp refuses framing fields in the trailers, so must the h11 adapter
    "te-trailer": b"POST /c HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n",
    "cl-trailer": b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
                  b"Content-Length: 1\r\n\r\n",
    "chunk-ext": b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n",
    # found by the fuzzer: llhttp takes a token run straight into a quoted string as a value
    "chunk-ext-token-quoted": b"POST /c HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\n5;x=5"y"\r\nhello\r\n'
                              b'0;=a"b";c\r\n\r\n',
    "chunk-ext-quoted-token": b"POST /c HTTP/1.1\r\n" + H + b'Transfer-Encoding: chunked\r\n\r\n5;x="y"z\r\nhello\r\n0\r\n\r\n',
    "trailers": b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-Sum: 1\r\n\r\n",
    "pipelined": b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "http10-ka": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "upgrade": b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW",
    "expect": b"PUT /e HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
    "ows": b"GET / HTTP/1.1\r\nHost:   r  \r\nX-Tab:\tv\t\r\n\r\n",
    "empty-value": b"GET / HTTP/1.1\r\n" + H + b"X-Empty:\r\n\r\n",
    "absolute": b"GET http://r/x HTTP/1.1\r\n" + H + b"\r\n",
    "incomplete-head": b"GET / HTTP/1.1\r\nHost: r\r\n",
    "incomplete-body": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nabc",
    # rejected by both
    "cl-te": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-cl": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "two-cl-same": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "two-cl-diff": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
    "cl-list": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1, 1\r\n\r\nx",
    "cl-neg": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n",
    "cl-plus": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\nx",
    "bad-chunk": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "neg-chunk": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "huge-chunk": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nx\r\n",
    "chunk-no-crlf": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "te-gzip": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-identity": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n  continued\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\n" + H + b"\n",
    "bare-lf-header": b"GET / HTTP/1.1\r\nHost: r\nX: y\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: r\rX: y\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : r\r\n\r\n",
    "bad-name": b"GET / HTTP/1.1\r\n" + H + b"X(A): 1\r\n\r\n",
    "nul-value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "http12": b"GET / HTTP/1.2\r\n" + H + b"\r\n",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\n" + H + b"\r\n",
    # found by the fuzz harness's no-stall check: h11 takes any visible byte in an authority
    "absolute-brace-host": b"GET http://a{b/ HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-two-at": b"GET http://u@v@a/ HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-query-backtick": b"GET http://a?`b HTTP/1.1\r\n" + H + b"\r\n",
    "lower-version": b"GET / http/1.1\r\n" + H + b"\r\n",
    # long bodies (counted by llhttp's adapter), and what may follow them on the connection
    "long-cl": POST_LONG,
    "long-cl-twice-then-get": POST_LONG + POST_LONG + b"GET /g HTTP/1.1\r\n" + H + b"\r\n",
    "long-cl-then-bad": POST_LONG + b"GET /g HTTP/1.1\r\n" + H + b"Content-Length: 1, 1\r\n\r\nx",
    "long-cl-close-then-bytes": POST_LONG.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
                                + b"GET /2 HTTP/1.1\r\n" + H + b"\r\n\x00garbage",
    "long-cl-http10-then-bytes": POST_LONG.replace(b"HTTP/1.1", b"HTTP/1.0", 1) + b"GET /2 HTTP/1.1\r\n\r\n",
    "long-cl-http10-ka": POST_LONG.replace(b"HTTP/1.1\r\n", b"HTTP/1.0\r\nConnection: keep-alive\r\n", 1)
                         + b"GET /2 HTTP/1.0\r\n\r\n",
    "long-cl-short": POST_LONG + POST_LONG[:-1],
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_request_parsers_agree(name: str, step: int) -> None:
    data = REQUESTS[name]
    h11_result = run_request(0, data, step)
    ll_result = run_request(1, data, step)
    if h11_result[0] == "reject":
        assert ll_result[0] == "reject", (name, ll_result)
    else:
        assert h11_result == ll_result, name


REJECTED = {"te-trailer", "cl-trailer", "cl-te", "te-cl", "two-cl-same", "two-cl-diff", "cl-list", "cl-neg", "cl-plus", "bad-chunk",
            "neg-chunk", "huge-chunk", "chunk-no-crlf", "te-gzip", "te-identity", "obs-fold", "bare-lf",
            "bare-lf-header", "bare-cr", "space-before-colon", "bad-name", "nul-value", "no-host",
            "two-hosts", "http12", "chunk-ext-quoted-token", "h2-preface", "space-in-target", "lower-version",
            "long-cl-then-bad", "absolute-brace-host", "absolute-two-at"}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_request_verdicts(name: str) -> None:
    assert (run_request(1, REQUESTS[name], 1 << 20)[0] == "reject") == (name in REJECTED)


RESPONSES = {
    "cl": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi", False, False),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", False, False),
    "close-delimited": (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", False, True),
    "http10": (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "head": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", True, False),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", False, False),
    "304": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", False, False),
    "100-then-200": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, False),
    "truncated": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", False, True),
    "cl-te": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False, False),
    "two-cl": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", False, False),
    "bad-status": (b"HTTP/1.1 2000 OK\r\n\r\n", False, False),
    # found by the fuzzer: h11 takes any HTTP/x.y status line, llhttp 0.9, 1.0, 1.1 and 2.0
    # found by the fuzzer: llhttp takes control bytes (NUL too) in the reason phrase, h11 does not
    "reason-nul": (b"HTTP/1.1 200 O\x00K\r\nContent-Length: 1\r\n\r\nx", False, False),
    "reason-del": (b"HTTP/1.1 200 O\x7fK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "reason-tab-obs": (b"HTTP/1.1 200 O\tK \xe9\r\nContent-Length: 1\r\n\r\nx", False, False),
    # found by the fuzzer: h11 takes control bytes in a response's field values, llhttp does not
    "value-ctl": (b"HTTP/1.1 200 OK\r\nX-A: a\x10b\r\nContent-Length: 1\r\n\r\nx", False, False),
    "value-del": (b"HTTP/1.1 200 OK\r\nX-A: a\x7f\r\nContent-Length: 1\r\n\r\nx", False, False),
    "value-tab-obs": (b"HTTP/1.1 200 OK\r\nX-A: a\tb\x80\xff\r\nContent-Length: 1\r\n\r\nx", False, False),
    # found by the fuzzer: the h11 adapter did not check a head that came in the read of a 1xx
    "bare-lf-after-100": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: b\n\r\n", False, False),
    # found by the fuzzer: llhttp's adapter took an HTTP/1.0 1xx then the close as the response
    "100-then-eof": (b"HTTP/1.0 100 Continue\r\n\r\n", False, True),
    "103-then-eof": (b"HTTP/1.1 103 Early Hints\r\nConnection: close\r\n\r\n", False, True),
    # found by the fuzzer: llhttp skips CR and LF before a status line, h11 refused them
    "leading-crlf": (b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "leading-cr-lf-mixed": (b"\n\r\rHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "crlf-after-100": (b"HTTP/1.1 100 Continue\r\n\r\n\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "only-crlf": (b"\r\n\r\n", False, True),
    "status-020": (b"HTTP/1.1 020 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "status-000": (b"HTTP/1.1 000 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "http10-100-then-200": (b"HTTP/1.0 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nuntil the end", False, True),
    # found by the fuzzer: llhttp reads a body after a 1xx other than 100 to 103
    "120-with-length": (b"HTTP/1.1 120 X\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, False),
    "199-then-200": (b"HTTP/1.1 199 X\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, True),
    "102-then-200": (b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "103-with-length-then-200": (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nContent-Length: 0\r\n\r\n"
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "http01": (b"HTTP/0.1 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "http09": (b"HTTP/0.9 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "http12": (b"HTTP/1.2 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "http20": (b"HTTP/2.0 200 OK\r\nContent-Length: 1\r\n\r\nx", False, False),
    "http20-after-100": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", False, False),
    "bad-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxx\r\n", False, False),
    # The h11 adapter's response chunks went by h11's rules, which take chunk lines and trailers
    # llhttp refuses; they now go through strict.ChunkFramer, as a request's do.
    "chunk-ext-empty": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nhi\r\n0\r\n\r\n", False, False),
    "chunk-size-space": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n", False, False),
    "chunk-ext-space": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2; a=b\r\nhi\r\n0\r\n\r\n", False, False),
    "chunk-ext": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nhi\r\n0;c\r\n\r\n", False, False),
    "trailer-cl": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nContent-Length: 2\r\n\r\n",
                   False, False),
    "trailer-te-coding": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n"
                          b"Transfer-Encoding: gzip\r\n\r\n", False, False),
    "trailer-ctl": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-A: \x01\r\n\r\n", False, False),
    "chunked-head": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True, False),
    "chunked-304": (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", False, False),
    "bare-lf": (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", False, False),
    "obs-fold": (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n", False, False),
    # Bytes after a response in the read that ended it: the response stands, then both refuse
    # (the exchange closes that connection rather than pooling it). Split, they come in a later
    # read, which neither parser sees (the pool closes an idle connection that speaks).
    "cl-then-bytes": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n", False, False),
    "chunked-then-bytes": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nx", False, False),
    "204-then-bytes": (b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", False, False),
    "head-then-bytes": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", True, False),
    "head-no-length-then-bytes": (b"HTTP/1.1 200 OK\r\n\r\nxyz", True, False),
    # Long bodies: llhttp's adapter counts them rather than parsing them (COUNT_MIN).
    "long-cl": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LONG) + LONG, False, False),
    "long-cl-truncated": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(LONG) + 1) + LONG, False, True),
    "long-cl-head": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LONG), True, False),
    "long-cl-304": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: %d\r\n\r\n" % len(LONG), False, False),
    "long-cl-after-100": (b"HTTP/1.1 100 Continue\r\nContent-Length: %d\r\n\r\n" % len(LONG)
                          + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LONG) + LONG, False, False),
    "long-cl-then-bytes": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LONG) + LONG + b"HTTP/1.1", False, False),
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
@pytest.mark.parametrize("step", [1, 5, 4093, 1 << 20])
def test_response_parsers_agree(name: str, step: int) -> None:
    data, head_request, eof = RESPONSES[name]
    a = run_response(0, data, step, head_request, eof)
    b = run_response(1, data, step, head_request, eof)
    assert a == b, name


@pytest.mark.parametrize("name", ["http01", "http09", "http12", "http20", "http20-after-100", "reason-nul", "reason-del",
                                  "value-ctl", "value-del", "bare-lf-after-100", "100-then-eof",
                                  "103-then-eof", "status-020", "status-000",
                                  "http10-100-then-200", "120-with-length", "199-then-200"])
@pytest.mark.parametrize("kit", [0, 1])
def test_a_response_the_upstream_cannot_have_meant_is_refused(name: str, kit: int) -> None:
    data, head_request, eof = RESPONSES[name]
    assert run_response(kit, data, 1 << 20, head_request, eof) == ("reject", None)


@pytest.mark.parametrize(("name", "refused"), [
    ("chunk-ext-empty", True), ("chunk-size-space", True), ("chunk-ext-space", True), ("chunk-ext", False),
    ("trailer-cl", True), ("trailer-te-coding", False), ("trailer-ctl", True), ("chunked-head", False),
    ("chunked-304", False),
])
@pytest.mark.parametrize("kit", [0, 1])
@pytest.mark.parametrize("step", [1, 1 << 20])
def test_response_chunk_lines_and_trailers_are_judged_by_llhttps_rules(name: str, refused: bool, kit: int,
                                                                       step: int) -> None:
    data, head_request, eof = RESPONSES[name]
    got = run_response(kit, data, step, head_request, eof)
    assert got[0] == ("reject" if refused else "ok"), got


@pytest.mark.parametrize(("start", "refused"), [
    (b"SSH-2.0-OpenSSH_9.2\r\n", True),  # an app that speaks another protocol: no blank line follows
    (b"http/1.1 200 OK\r\n", True),  # the protocol name is case-sensitive (RFC 9112 2.3)
    (b"\r\nX", True),
    (b"HTTP/1.1 200 OK\r\n", False),  # a head still arriving
    (b"\r\nHTT", False),
])
@pytest.mark.parametrize("kit", [0, 1])
def test_a_response_that_cannot_begin_with_http_is_refused_before_its_head_ends(start: bytes, refused: bool,
                                                                                kit: int) -> None:
    # No EOF and no blank line: llhttp refuses at the first byte that cannot begin "HTTP/", and
    # the h11 adapter must too, or the request waits for a head that never comes.
    assert run_response(kit, start, 1, False, eof=False)[0] == ("reject" if refused else "ok")


@pytest.mark.parametrize("kit", [0, 1])
@pytest.mark.parametrize("step", [1, 1 << 20])
def test_tunnel_bytes_after_a_101_are_handed_on_untouched(kit: int, step: int) -> None:
    # CR and LF are skipped before a status line, never after a 101: from there it is not HTTP.
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n\r\n\nab"
    rec = Recorder()
    parser = KITS[kit].response(rec, False, True)
    for i in range(0, len(data), step):
        rest = parser.feed(data[i:i + step])
        if rest is not None:
            assert rest + data[i + step:] == b"\r\n\nab"
            return
    raise AssertionError("no upgrade")


@pytest.mark.parametrize("name", sorted(n for n in RESPONSES if n.endswith("-then-bytes")))
@pytest.mark.parametrize("kit", [0, 1])
def test_bytes_after_a_response_in_its_read_are_refused(name: str, kit: int) -> None:
    data, head_request, eof = RESPONSES[name]
    assert run_response(kit, data, 1 << 20, head_request, eof) == ("reject", None)


http_ish = st.lists(st.sampled_from([
    b"GET", b"POST", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\n", b"Host: r", b"Content-Length: 3",
    b"Content-Length: 1", b"Transfer-Encoding: chunked", b"Connection: close", b"Connection: upgrade",
    b"Upgrade: x", b"abc", b"0", b"3", b"zz", b":", b"\t", b"X-A: 1",
]), max_size=30).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(http_ish, st.integers(min_value=1, max_value=40))
def test_hypothesis_parsers_never_raise_others_and_agree(data: bytes, step: int) -> None:
    results = [run_request(i, data, step) for i in range(2)]  # only ParseError may escape (caught)
    verdicts = [r[0] == "reject" for r in results]
    if verdicts[0] != verdicts[1]:
        # llhttp rejects a bad request line at its first bad byte, h11 once the line is complete:
        # the waiting side must have seen no message yet and must reject once the head ends.
        waiting = verdicts.index(False)
        assert results[waiting][1] in ([], ["begin"]), (data, results)
        assert run_request(waiting, data + b"\r\n\r\n", step)[0] == "reject", (data, results)
    elif not verdicts[0]:
        assert results[0] == results[1], data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_hypothesis_random_bytes(data: bytes) -> None:
    for i in range(2):
        run_request(i, data, 17)
        run_response(i, data, 17, False, True)


def _load_badclient() -> Any:
    """The attacker's case table (tests/integration/apps/badclient.py) is the one source of the
    bad inputs: the parsers, the sidecar (component) and the pods (integration) all get it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "integration" / "apps" / "badclient.py"
    spec = importlib.util.spec_from_file_location("badclient", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BADCLIENT = _load_badclient()


@pytest.mark.parametrize(("name", "data", "status"), BADCLIENT.CASES, ids=[c[0] for c in BADCLIENT.CASES])
@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_bad_input_refused_with_the_same_status_by_both(name: str, data: bytes, status: int, step: int) -> None:
    if step == 1 and len(data) > 20_000:
        step = 97  # a byte at a time through 70 KiB is slow in h11 and proves nothing more
    got = [run_request(i, data, step) for i in range(2)]
    assert got == [("reject", status), ("reject", status)], (name, got)


@pytest.mark.parametrize(("name", "data"), BADCLIENT.GOOD_LIMITS, ids=[c[0] for c in BADCLIENT.GOOD_LIMITS])
def test_requests_at_the_limits_pass_both(name: str, data: bytes) -> None:
    got = [run_request(i, data, 1 << 20) for i in range(2)]
    assert got[0][0] == "ok" and got[0] == got[1], (name, got)
    assert got[0][1][-1] == "end"


@pytest.mark.parametrize("step", [1, 5, 1 << 20])
def test_bytes_after_a_closing_request_are_ignored(step: int) -> None:
    # RFC 9112 9.6: nothing after a request with Connection: close is processed (llhttp would
    # refuse the bytes; the connection closes after the response either way).
    data = (b"GET /1 HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: r\r\n\r\n"
            b"\x00garbage")
    a, b = (run_request(i, data, step) for i in range(2))
    assert a == b and a[0] == "ok"
    assert [e[2] for e in a[1] if isinstance(e, tuple)] == [b"/1"]


# llhttp's adapter on its own: what counting a long body changes, and what it must not.

def _tap(rec: Recorder, name: str) -> list[bytes]:
    """The body chunks as ``rec`` gets them from now on: the objects themselves, so a chunk handed
    on as it was read can be told from a copy."""
    got: list[bytes] = []
    keep = getattr(rec, name)

    def body(data: bytes) -> None:
        got.append(data)
        keep(data)

    setattr(rec, name, body)
    return got


def _counted_run(chunks: list[bytes]) -> tuple[Recorder, Any, list[bytes], str | None]:
    """Feed ``chunks`` to one llhttp response parser; the recorder, the parser, the body chunks
    as the sink got them (the objects themselves), and the refusal's reason if any."""
    rec = Recorder()
    got = _tap(rec, "on_response_body")
    parser = KITS[1].response(rec, False, False)
    try:
        for chunk in chunks:
            assert parser.feed(chunk) is None
    except ParseError as exc:
        return rec, parser, got, exc.reason
    return rec, parser, got, None


def test_a_long_body_reaches_the_sink_as_read_and_completes_at_its_length() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LONG)
    later = [LONG[1000:40000], LONG[40000:76799], LONG[76799:]]
    rec, parser, got, refused = _counted_run([head + LONG[:1000], *later])
    assert refused is None
    assert rec.events[-1] == "end" and rec.events[-2] == ("body", LONG)
    # After the read that carried the head, each read is handed on itself: no copy made.
    assert all(a is b for a, b in zip(got[1:], later, strict=True))
    # llhttp never saw those bytes: the connection's next response needs a new parser.
    assert parser.rearm(Recorder(), False, False) is False


def test_a_short_body_is_parsed_and_its_parser_re_armed() -> None:
    rec, parser, _, refused = _counted_run([b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"a", b"bc"])
    assert refused is None and rec.events[-2:] == [("body", b"abc"), "end"]
    again = Recorder()
    assert parser.rearm(again, False, False) is True
    assert parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n") is None
    assert again.events[-1] == "end"


@pytest.mark.parametrize("length", [3, len(LONG)])
def test_bytes_past_the_body_in_the_same_read_are_refused_after_it_completes(length: int) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length
    body = LONG[:length]
    # The body's last read carries bytes of a response nobody asked for: the response completes,
    # then the parser refuses (the exchange closes that connection rather than pooling it).
    rec, _, _, refused = _counted_run([head + body[:1], body[1:] + b"HTTP/1.1 200 OK\r\n"])
    assert rec.events[-2:] == [("body", body), "end"]
    assert refused == "bytes after the response"


def test_an_upstream_closing_mid_count_is_refused() -> None:
    rec = Recorder()
    parser = KITS[1].response(rec, False, False)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(LONG) + 1))
    parser.feed(LONG)
    with pytest.raises(ParseError) as info:
        parser.feed_eof()
    assert info.value.status == 502 and "end" not in rec.events


def test_a_long_request_body_reaches_the_sink_as_read_and_the_next_request_is_parsed_after_it() -> None:
    rec = Recorder()
    got = _tap(rec, "on_request_body")
    parser = KITS[1].request(rec)
    head = POST_LONG[:-len(LONG)]
    later = [LONG[500:60000], LONG[60000:]]
    for chunk in (head + LONG[:500], *later):
        assert parser.feed(chunk) is None
    assert all(a is b for a, b in zip(got[1:], later, strict=True))  # handed on, not copied
    assert rec.events[-2:] == [("body", LONG), "end"]
    # a pipelined request right behind a counted body, in the same read as its last bytes
    assert parser.feed(POST_LONG[:-10]) is None
    assert parser.feed(POST_LONG[-10:] + b"GET /next HTTP/1.1\r\n" + H + b"\r\n") is None
    assert [e[2] for e in rec.events if isinstance(e, tuple) and e[0] == "head"] == [b"/l", b"/l", b"/next"]
    assert rec.events[-1] == "end"
