"""The detector on every prefix of real request lines, of broken requests and of non-HTTP captures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshns.dataplane.http1.detect import (
    DETECT_LIMIT,
    Http1,
    Http2,
    NeedMore,
    Opaque,
    detect,
    is_h2_server_hello,
    looks_like_request,
)

HTTP_CAPTURES = [
    b"GET / HTTP/1.1\r\nHost: reviews:9080\r\n\r\n",
    b"POST /api/v1/items?x=1&y=%20 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    b"HEAD /health HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"M-SEARCH * HTTP/1.1\r\n",
    b"GET http://proxy.example/abs HTTP/1.1\r\n\r\n",
    b"CONNECT db:5432 HTTP/1.1\r\n\r\n",
]
# Start like a request, then break: HTTP, so that the parser answers them (400/414) instead of
# relaying a malformed request to the app.
BROKEN_REQUESTS = [
    b"GET / HTTP/1.2\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/3\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
    b"GET  / HTTP/1.1\r\n",  # two spaces: llhttp takes it, so does the h11 adapter
    b"GET / HTTP/1.1 \r\n",
    b"get / HTTP/1.1\r\n",  # a lowercase method: refused by both parsers
    b"GET /a\x00b HTTP/1.1\r\n",  # NUL in the target
    b"GET /a\x01",  # a control byte: no request line carries it, decided at once
    b"GET /\xff",
    b"GET /a b HTTP/1.1\r\n",  # a space in the target
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # almost the HTTP/2 preface
    b"GET * HTTP/1.1\r\n",
    b"GET / http/1.1\r\n",  # the version in lowercase: refused by both parsers
    b"OPTIONS * http/1.1\r\n",
]
TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100f8010000f40303" + "00" * 32 + "20" + "11" * 32 + "0002130101000099")
OPAQUE_CAPTURES = [
    TLS_CLIENT_HELLO,
    b"EHLO mail.example\r\n",  # a method-like token, then a target, then no HTTP version
    b"*1\r\n$4\r\nPING\r\n",
    b"\x00\x01\x02\x03binary",
    b" GET / HTTP/1.1\r\n",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"get /key\r\n",  # a text protocol's command (or HTTP/0.9): no version, relayed
    b"set /k 0 0 5\r\nhello\r\n",
    b"GET http://x\r\n",
    b"OPTIONS * RTSP/1.0\r\n",
    b"A \x00\x01\x02",  # binary after a printable byte and a space
]


def _decided_at(capture: bytes) -> int:
    """Where a request is known to be one: at " HTTP/"."""
    return capture.index(b" HTTP/") + len(b" HTTP/")


@pytest.mark.parametrize("capture", HTTP_CAPTURES)
def test_every_prefix_of_a_request_line(capture: bytes) -> None:
    at = _decided_at(capture)
    for n in range(len(capture) + 1):
        got = detect(capture[:n])
        if n < at:
            assert got == NeedMore(), (n, capture[:n])
        else:
            assert got == Http1(capture.split(b" ", 1)[0]), (n, capture[:n])


@pytest.mark.parametrize("capture", BROKEN_REQUESTS)
def test_broken_requests_are_http(capture: bytes) -> None:
    results = [detect(capture[:n]) for n in range(len(capture) + 1)]
    assert all(isinstance(r, (NeedMore, Http1)) for r in results), results
    assert isinstance(results[-1], Http1), capture
    first = next(i for i, r in enumerate(results) if isinstance(r, Http1))
    assert all(r == results[-1] for r in results[first:])


@pytest.mark.parametrize("capture", OPAQUE_CAPTURES)
def test_every_prefix_of_non_http(capture: bytes) -> None:
    results = [detect(capture[:n]) for n in range(len(capture) + 1)]
    assert all(not isinstance(r, Http1) for r in results)
    assert isinstance(results[-1], Opaque), capture
    # once opaque, always opaque: more bytes never turn it back
    first = next(i for i, r in enumerate(results) if isinstance(r, Opaque))
    assert all(isinstance(r, Opaque) for r in results[first:])


H2_CAPTURE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"


def test_every_prefix_of_the_h2_preface_needs_more_then_is_http2() -> None:
    results = [detect(H2_CAPTURE[:n]) for n in range(len(H2_CAPTURE) + 1)]
    assert all(r == NeedMore() for r in results[:24])
    assert all(isinstance(r, Http2) for r in results[24:])


@pytest.mark.parametrize(("first", "hello"), [
    (bytes.fromhex("000000040000000000"), True),  # empty SETTINGS
    (bytes.fromhex("000012040000000000") + bytes(18), True),  # three settings
    (bytes.fromhex("000012"), True),  # a prefix of one: wait for more
    (bytes.fromhex("000012040100000000"), True),  # SETTINGS ACK
    (bytes.fromhex("000011040000000000"), False),  # not a multiple of 6
    (bytes.fromhex("000012040000000001"), False),  # on a stream
    (bytes.fromhex("000012010400000001"), False),  # HEADERS
    (b"220 mail.example ESMTP\r\n", False),  # a server-first banner
    (b"\x4a\x00\x00\x00\x0a8.0.36", False),  # a MySQL greeting
])
def test_h2_server_hello(first: bytes, hello: bool) -> None:
    assert is_h2_server_hello(first) is hello


def test_ehlo_needs_more_until_it_cannot_be_http() -> None:
    assert detect(b"EHLO") == NeedMore()
    assert detect(b"EHLO mail") == NeedMore()  # could still be "EHLO mail HTTP/1.1"
    assert isinstance(detect(b"EHLO mail.example\r\n"), Opaque)


def test_the_limit_decides() -> None:
    # An origin-form request line still going at the limit is an oversized request (414 from
    # the parser); anything else undecided there is opaque.
    assert detect(b"GET /" + b"a" * (DETECT_LIMIT - 10)) == NeedMore()
    assert detect(b"GET /" + b"a" * DETECT_LIMIT) == Http1(b"GET")
    assert isinstance(detect(b"GET http://" + b"a" * DETECT_LIMIT), Opaque)
    assert isinstance(detect(b"A" * DETECT_LIMIT), Opaque)
    assert isinstance(detect(b"GET " + b" " * DETECT_LIMIT), Opaque)


def test_looks_like_request() -> None:
    assert looks_like_request(b"GET ")
    assert looks_like_request(b"get /a")
    assert not looks_like_request(b"GET")
    assert not looks_like_request(b"\x16\x03\x01")
    assert not looks_like_request(b"")
    assert not looks_like_request(b"A" * 100 + b" ")


@given(st.binary(max_size=200))
def test_never_raises_and_only_documented_results(data: bytes) -> None:
    got = detect(data)
    assert isinstance(got, (Http1, Http2, Opaque, NeedMore))
    if isinstance(got, Http1):
        assert data.startswith(got.method + b" ")
        assert looks_like_request(data)


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_a_verdict_is_final(a: bytes, b: bytes) -> None:
    first = detect(a)
    if not isinstance(first, NeedMore):
        assert detect(a + b) == first
