"""Head checks and serialisation: case and order kept, hop-by-hop headers stripped."""

from __future__ import annotations

import pytest

from meshns.dataplane.http1.head import (
    ParseError,
    local_response,
    request_head,
    response_head,
    serialize_request,
    serialize_response,
)


def test_request_keeps_case_and_order_and_strips_hop_by_hop() -> None:
    headers = [
        (b"Host", b"reviews"), (b"X-Trace-ID", b"abc"), (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"secret"), (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"),
        (b"Proxy-Connection", b"keep-alive"), (b"Trailer", b"X-Sum"), (b"accept", b"*/*"),
        (b"Upgrade", b"h2c"), (b"Transfer-Encoding", b"chunked"),
    ]
    head = request_head(b"POST", b"/p?q=1", 1, headers)
    assert head.chunked and head.keep_alive and not head.upgrade
    out = serialize_request(head, b"vip:1")
    assert out == (b"POST /p?q=1 HTTP/1.1\r\nHost: reviews\r\nX-Trace-ID: abc\r\naccept: */*\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")


def test_upgrade_request_keeps_upgrade() -> None:
    head = request_head(b"GET", b"/ws", 1, [(b"Host", b"h"), (b"Connection", b"Upgrade"),
                                            (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Key", b"k")])
    assert head.upgrade
    assert serialize_request(head, b"x") == (
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n"
        b"Connection: upgrade\r\n\r\n")


def test_h2c_upgrade_is_refused_and_the_request_goes_on_as_http11() -> None:
    head = request_head(b"GET", b"/", 1, [(b"Host", b"h"), (b"Connection", b"Upgrade, HTTP2-Settings"),
                                          (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAAQAAP__")])
    assert not head.upgrade
    assert serialize_request(head, b"x") == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_http10_request_gets_host_and_keep_alive_only_if_asked() -> None:
    head = request_head(b"GET", b"/", 0, [])
    assert not head.keep_alive
    assert serialize_request(head, b"10.0.0.1:80") == b"GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n"
    assert request_head(b"GET", b"/", 0, [(b"Connection", b"Keep-Alive")]).keep_alive


def test_response_serialisation() -> None:
    rh = response_head(200, b"OK", 1, [(b"Content-Type", b"text/plain"), (b"Connection", b"close"),
                                       (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")])
    assert rh.chunked and not rh.keep_alive
    out = serialize_response(rh, [b"x-meshns-attempts: 1\r\n"], chunked=True, close=False, keep_alive_10=False)
    assert out == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nx-meshns-attempts: 1\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
    out10 = serialize_response(rh, [], chunked=False, close=True, keep_alive_10=False)
    assert b"Transfer-Encoding" not in out10 and out10.endswith(b"Connection: close\r\n\r\n")


def test_close_delimited_response_is_not_keep_alive() -> None:
    assert not response_head(200, b"OK", 1, []).keep_alive
    assert response_head(204, b"No Content", 1, []).keep_alive
    assert response_head(200, b"OK", 1, [(b"Content-Length", b"0")]).keep_alive


@pytest.mark.parametrize(("headers", "status"), [
    ([(b"Host", b"h"), (b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")], 400),
    ([(b"Host", b"h"), (b"Content-Length", b"1"), (b"Content-Length", b"1")], 400),
    ([(b"Host", b"h"), (b"Content-Length", b"-1")], 400),
    ([(b"Host", b"h"), (b"Content-Length", b"1 2")], 400),
    ([(b"Host", b"h"), (b"Transfer-Encoding", b"gzip")], 501),
    ([(b"Host", b"h"), (b"Transfer-Encoding", b"gzip, chunked")], 501),
    # two TE headers are one list "chunked, chunked" (as Envoy merges them): not exactly chunked
    ([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], 501),
    ([(b"Host", b"h"), (b"Transfer-Encoding", b"gzip"), (b"Content-Length", b"1")], 400),
    ([(b"Host", b"h"), (b"Transfer-Encoding", b"Chunked ")], None),
    ([], 400),
    ([(b"Host", b"a"), (b"Host", b"b")], 400),
    ([(b"Host", b"h")] + [(b"X", b"1")] * 100, 431),
])
def test_smuggling_shapes_rejected(headers: list[tuple[bytes, bytes]], status: int | None) -> None:
    if status is None:
        assert request_head(b"POST", b"/", 1, headers).chunked
        return
    with pytest.raises(ParseError) as info:
        request_head(b"POST", b"/", 1, headers)
    assert info.value.status == status


def test_local_response() -> None:
    out = local_response(503, "Service Unavailable", [b"x-meshns-response-flags: UO\r\n"], b"no\n", close=True)
    assert out == (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n"
                   b"x-meshns-response-flags: UO\r\nconnection: close\r\n\r\nno\n")


@pytest.mark.parametrize(
    ("values", "tokens"),
    [
        ([], set()),
        ([b"keep-alive"], {b"keep-alive"}),
        ([b" Close "], {b"close"}),  # the shared common sets: case and spaces as any other
        ([b"Upgrade"], {b"upgrade"}),
        ([b"keep-alive, X-Private"], {b"keep-alive", b"x-private"}),
        ([b"close", b"Upgrade"], {b"close", b"upgrade"}),  # several headers: one list
        ([b", ,close,"], {b"close"}),  # empty elements dropped
        ([b""], set()),
    ],
)
def test_connection_tokens(values: list[bytes], tokens: set[bytes]) -> None:
    headers = [(b"Host", b"h"), *((b"Connection", v) for v in values)]
    assert request_head(b"GET", b"/", 1, headers).conn_tokens == frozenset(tokens)
    assert response_head(200, b"OK", 1, [(b"Content-Length", b"0"), *headers[1:]]).conn_tokens == frozenset(tokens)
