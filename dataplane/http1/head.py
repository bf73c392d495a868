"""Message heads: what both parsers produce, the checks both apply, and the bytes we write.

Both parser adapters hand their raw header list (wire case and order) to ``request_head`` /
``response_head``, so framing and smuggling checks are made once, identically, whichever parser
ran. Serialisation writes the kept headers back byte for byte (case and order preserved) and drops
only hop-by-hop headers: Connection and every header it lists, Keep-Alive, Proxy-Connection, TE,
Trailer, Transfer-Encoding (the proxy re-frames bodies itself) and Upgrade (kept for upgrades).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 100
# A request line longer than this is answered 414 (nginx's large_client_header_buffers holds a
# request line of up to 8 KiB by default, 16 KiB is a common setting; Envoy has no separate
# limit). Counted as method SP target SP HTTP/1.x, single-spaced, without the CRLF.
MAX_REQUEST_LINE: Final = 16 * 1024

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade",
})


class ParseError(Exception):
    """The peer sent something we will not forward; ``status`` is the answer a client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    minor: int  # HTTP/1.<minor>
    headers: Headers
    content_length: int | None
    chunked: bool
    keep_alive: bool
    upgrade: bool  # Connection: upgrade with an Upgrade header
    expect_continue: bool
    conn_tokens: frozenset[bytes]
    host: bytes | None


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    minor: int
    headers: Headers
    content_length: int | None
    chunked: bool
    keep_alive: bool
    conn_tokens: frozenset[bytes]


# The header names _framing looks at, to a small code: one dict lookup per header instead of a
# chain of comparisons, since nearly every header is none of them (response_head measured 4.7 us
# for nginx's eight headers, most of it here).
_CL, _TE, _CONN, _HOST, _EXPECT = range(5)
_FRAMING_NAMES: Final = {b"content-length": _CL, b"transfer-encoding": _TE, b"connection": _CONN,
                         b"host": _HOST, b"expect": _EXPECT}
# The usual Connection values, already split: most heads carry one of these (or none).
_COMMON_TOKENS: Final = {b"keep-alive": frozenset({b"keep-alive"}), b"close": frozenset({b"close"}),
                         b"upgrade": frozenset({b"upgrade"})}
_NO_TOKENS: Final[frozenset[bytes]] = frozenset()


def _framing(headers: Headers, request: bool) -> tuple[int | None, bytes | None, frozenset[bytes], bytes | None,
                                                    bytes | None]:
    """(content-length, transfer-encoding, connection tokens, host, expect); raises ParseError on
    ambiguity (the request smuggling shapes: CL with TE, two CLs, two TEs in a response).

    Several Transfer-Encoding headers of a request are one list (RFC 9110 5.3), as Envoy merges
    them: the result is then never exactly "chunked" and the request gets 501 like any other
    coding. A response keeps the stricter rule (a second TE is a protocol error, 502)."""
    if len(headers) > MAX_HEADERS:
        raise ParseError(431, "too many headers")
    cl: int | None = None
    te: bytes | None = None
    conn_values: list[bytes] = []
    host = expect = None
    kinds = _FRAMING_NAMES
    for name, value in headers:
        kind = kinds.get(name.lower())
        if kind is None:
            continue
        if kind == _CL:
            if cl is not None:
                raise ParseError(400, "duplicate Content-Length")
            v = value.strip()
            if not v.isdigit() or len(v) > 18:
                raise ParseError(400, "bad Content-Length")
            cl = int(v)
        elif kind == _TE:
            if te is not None and not request:
                raise ParseError(400, "duplicate Transfer-Encoding")
            v = value.strip().lower()
            te = v if te is None else te + b", " + v
        elif kind == _CONN:
            conn_values.append(value)
        elif kind == _HOST:
            if host is not None:
                raise ParseError(400, "duplicate Host")
            host = value
        else:
            expect = value.strip().lower()
    if te is not None and cl is not None:
        # Envoy's default (http1.content_length_and_chunked_not_allowed): 400, checked before
        # the coding itself, so a smuggling attempt always gets the same answer.
        raise ParseError(400, "Content-Length with Transfer-Encoding")
    return cl, te, _connection_tokens(conn_values), host, expect


def _connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    """The lower-cased, stripped, non-empty tokens of every Connection header."""
    if not values:
        return _NO_TOKENS
    if len(values) == 1:
        common = _COMMON_TOKENS.get(values[0].strip().lower())
        if common is not None:
            return common
    tokens = {t.strip().lower() for value in values for t in value.split(b",")}
    tokens.discard(b"")
    return frozenset(tokens)


# What llhttp refuses in an authority (CONNECT's target, an absolute-form's host part), found by
# trying every visible byte against it: RFC 3986's reg-name, IP-literal and userinfo take none.
_NOT_IN_AUTHORITY: Final = re.compile(rb'["#<>\\^`{|}]')


def _valid_authority(target: bytes) -> bool:
    host = target.partition(b"/")[0].partition(b"?")[0]  # up to the path or query, as llhttp reads it
    return _NOT_IN_AUTHORITY.search(host) is None and host.count(b"@") <= 1  # userinfo@host


def _valid_target(method: bytes, target: bytes) -> bool:
    """RFC 9112 3.2: origin-form (/path), absolute-form (scheme://...), authority-form (CONNECT
    only) or asterisk-form (OPTIONS only), with llhttp's authority characters. llhttp enforces
    this; h11 does not, so both adapters check it here and agree."""
    if target.startswith(b"/"):
        return True
    if target == b"*":
        return method == b"OPTIONS"
    if method == b"CONNECT":
        return b"/" not in target and b":" in target and _valid_authority(target)
    scheme, sep, rest = target.partition(b"://")
    return bool(sep) and scheme.isalpha() and _valid_authority(rest)


def request_head(method: bytes, target: bytes, minor: int, headers: Headers) -> RequestHead:
    if not _valid_target(method, target):
        raise ParseError(400, "invalid request target")
    cl, te, tokens, host, expect = _framing(headers, True)
    # Envoy answers 501 to any Transfer-Encoding other than exactly "chunked" (case aside),
    # and to a CONNECT with one (RFC 9110 9.3.6: a CONNECT body has no meaning). RFC 9112 6.1
    # allows 501 for a coding the server does not understand; a proxy that forwarded a coding
    # it cannot frame would be the smuggling hole, so nothing but chunked passes.
    if te is not None and (te != b"chunked" or method == b"CONNECT"):
        raise ParseError(501, "unsupported Transfer-Encoding")
    chunked = te is not None
    if minor == 1 and host is None:
        raise ParseError(400, "HTTP/1.1 request without Host")
    keep_alive = b"close" not in tokens and (minor == 1 or b"keep-alive" in tokens)
    # An upgrade to h2c is refused the way Envoy refuses it: Upgrade and HTTP2-Settings are
    # dropped and the request goes on as HTTP/1.1, so the server answers in HTTP/1.1. (Clients
    # wanting HTTP/2 in cleartext use prior knowledge, which the sidecar serves per stream.)
    upgrade = b"upgrade" in tokens and any(n.lower() == b"upgrade" and v.strip().lower() != b"h2c"
                                           for n, v in headers)
    return RequestHead(method, target, minor, headers, cl, chunked, keep_alive, upgrade,
                       expect == b"100-continue", tokens, host)


# Control bytes but HTAB: not allowed in a reason phrase (RFC 9112 4) or a field value (RFC 9110
# 5.5). h11 refuses them in the reason, llhttp in values; each adapter checks what its parser takes.
CTL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The HTTP/1 versions both adapters take, in request and status lines.
HTTP_VERSIONS: Final = (b"1.0", b"1.1")


def response_head(status: int, reason: bytes, minor: int, headers: Headers) -> ResponseHead:
    if CTL.search(reason) is not None:  # llhttp takes them, NUL too, and they would reach the client
        raise ParseError(502, "control character in the reason phrase")
    if status < 100:  # llhttp takes any three digits, "020" too; h11 and RFC 9110 15 do not
        raise ParseError(502, "bad status code")
    if 104 <= status < 200:
        # llhttp skips the body of 100 to 103 only, and would read any other 1xx's body by its
        # framing (to the close without one); such codes are unassigned (RFC 9110 15.2).
        raise ParseError(502, "an unknown 1xx status")
    if status < 200 and minor == 0:
        # HTTP/1.0 has no 1xx (RFC 9110 15.2); llhttp takes one as closing the connection and
        # refuses the final response after it, h11 reads on.
        raise ParseError(502, "a 1xx response in HTTP/1.0")
    cl, te, tokens, _, _ = _framing(headers, False)
    # A coding other than chunked alone: the body runs to the close (RFC 9112 6.3).
    chunked = te == b"chunked"
    keep_alive = (b"close" not in tokens) if minor == 1 else (b"keep-alive" in tokens)
    if not chunked and cl is None and status >= 200 and status not in (204, 304):
        keep_alive = False  # close-delimited
    return ResponseHead(status, reason, minor, headers, cl, chunked, keep_alive, tokens)


def _kept(headers: Headers, tokens: frozenset[bytes], keep_upgrade: bool) -> list[bytes]:
    out: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if (lname in HOP_BY_HOP or lname in tokens) and not (keep_upgrade and lname == b"upgrade"):
            continue
        out += (name, b": ", value, b"\r\n")
    return out


def serialize_request(head: RequestHead, default_host: bytes) -> bytes:
    """The request as sent upstream: always HTTP/1.1, keep-alive, bodies chunked or length-framed."""
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    parts += _kept(head.headers, head.conn_tokens, head.upgrade)
    if head.host is None:
        parts.append(b"Host: " + default_host + b"\r\n")
    if head.upgrade:
        parts.append(b"Connection: upgrade\r\n")
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def serialize_response(head: ResponseHead, extra: list[bytes], *, chunked: bool, close: bool,
                       keep_alive_10: bool) -> bytes:
    """The response as sent downstream. ``extra`` holds ready header lines (b"name: value\\r\\n")."""
    upgrade = head.status == 101
    parts = [b"HTTP/1.1 %d " % head.status, head.reason, b"\r\n"]
    parts += _kept(head.headers, head.conn_tokens, upgrade)
    parts += extra
    if upgrade:
        parts.append(b"Connection: upgrade\r\n")
    elif close:
        parts.append(b"Connection: close\r\n")
    elif keep_alive_10:
        parts.append(b"Connection: keep-alive\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def local_response(status: int, reason: str, extra: list[bytes], body: bytes, *, close: bool) -> bytes:
    """A response the sidecar makes itself (errors, faults)."""
    parts = [f"HTTP/1.1 {status} {reason}\r\n".encode("ascii"), b"content-type: text/plain\r\n",
             b"content-length: %d\r\n" % len(body), *extra]
    if close:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)
