"""Protocol detection on the client's first bytes: is this an HTTP/1.x request?

A pure function of the bytes seen so far, tested on every prefix of real captures (the habit of
linkerd2-proxy's ``http/detect``) and for monotonicity by hypothesis: once a verdict other than
``NeedMore`` is given, more bytes never change it. Only the first ``DETECT_LIMIT`` bytes are
looked at, so at the limit the verdict is final too.

The line between HTTP and opaque TCP: bytes that cannot *start* an HTTP/1.x request are relayed
as TCP (a client-first protocol such as ``get key\\r\\n`` or ``EHLO`` keeps working), while bytes
that start like a request and then break are HTTP, so the parser refuses them with a status
instead of relaying a malformed request to the app. A request starts like ``METHOD SP``:

    origin-form (``METHOD SP+ /``, nearly every request): HTTP once `` HTTP/`` (in any case)
        appears on the first line, or a byte no request line may carry appears there (NUL,
        CTL, DEL, non-ASCII: the parser answers 400), or the line is still going at the limit
        (an oversized request line: 414). A line ending without a version is an HTTP/0.9-style
        line, or a text protocol's command: opaque.
    other forms (``*``, ``http://..``, ``host:port``): the target must be visible characters
        followed by SP+ ``HTTP/`` (in any case); anything else is opaque.

The version after ``HTTP/`` is the parser's business (``HTTP/2.0`` or bare LF line ends get a
400 there). The HTTP/2 connection preface (prior knowledge, h2c) answers ``Http2``; until its 24
bytes are there a prefix of it needs more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DETECT_LIMIT: Final = 8192
# RFC 9110 tchar: what a method token may contain.
_TCHAR: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSION: Final = b"HTTP/"
# The version's name in any case: "http/1.1" is a broken request (400), not another protocol.
_SP_VERSION: Final = re.compile(rb" [Hh][Tt][Tt][Pp]/")
_LINE_END: Final = re.compile(rb"[\r\n]")
_NOT_VISIBLE: Final = re.compile(rb"[^\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class Http1:
    method: bytes


@dataclass(frozen=True, slots=True)
class Http2:
    pass


@dataclass(frozen=True, slots=True)
class Opaque:
    reason: str


@dataclass(frozen=True, slots=True)
class NeedMore:
    pass


Detected = Http1 | Http2 | Opaque | NeedMore
NEED_MORE: Final = NeedMore()
HTTP2: Final = Http2()
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS_FRAME: Final = 0x4
_AT_LIMIT: Final = Opaque("no request line within the detection limit")


def detect(data: bytes) -> Detected:
    """Classify the first bytes of a connection (everything the client sent so far)."""
    if len(data) > DETECT_LIMIT:
        data = data[:DETECT_LIMIT]
    n = len(data)
    if data[:24] == H2_PREFACE[:n]:
        return NEED_MORE if n < len(H2_PREFACE) else HTTP2
    i = 0
    while i < n and data[i] in _TCHAR:
        i += 1
    if i == n:
        return _more(n)
    if i == 0 or data[i] != 0x20:
        return Opaque("no method token")
    method = data[:i]
    while i < n and data[i] == 0x20:
        i += 1
    if i == n:
        return _more(n)
    if data[i] == 0x2F:  # "/"
        return _origin_form(data, i, method)
    return _other_form(data, i, method)


def _origin_form(data: bytes, start: int, method: bytes) -> Detected:
    end = _LINE_END.search(data, start)
    stop = end.start() if end is not None else len(data)
    if _SP_VERSION.search(data, start, stop) is not None or _NOT_VISIBLE.search(data, start, stop) is not None:
        return Http1(method)
    if end is not None:
        return Opaque("request line without an HTTP version")
    if len(data) >= DETECT_LIMIT:
        return Http1(method)  # a request line still going: the parser answers 414
    return NEED_MORE


def _other_form(data: bytes, i: int, method: bytes) -> Detected:
    n = len(data)
    start = i
    while i < n and 0x21 <= data[i] <= 0x7E:
        i += 1
    if i == n:
        return _more(n)
    if i == start or data[i] != 0x20:
        return Opaque("bad request target")
    while i < n and data[i] == 0x20:
        i += 1
    tail = data[i:i + len(_VERSION)].upper()
    if tail != _VERSION[:len(tail)]:
        return Opaque("not HTTP")
    if len(tail) < len(_VERSION):
        return _more(n)
    return Http1(method)


def _more(n: int) -> Detected:
    return NEED_MORE if n < DETECT_LIMIT else _AT_LIMIT


def looks_like_request(data: bytes) -> bool:
    """Whether undecided first bytes already are ``METHOD SP``: a client that stops there (a
    slowloris) is an HTTP client that gets a 408, not an opaque connection."""
    i = 0
    n = min(len(data), 64)
    while i < n and data[i] in _TCHAR:
        i += 1
    return 0 < i < len(data) and data[i] == 0x20


def is_h2_server_hello(data: bytes) -> bool:
    """Whether an upstream's first bytes are an HTTP/2 SETTINGS frame on stream 0 (or a prefix of
    its 9-byte header). An h2 server sends its SETTINGS at once, before the client's preface: that
    is not a server-first protocol speaking, so it must not make the connection opaque."""
    head = data[:9]
    if len(head) >= 4 and head[3] != _SETTINGS_FRAME:
        return False
    if len(head) >= 9 and (head[4] & ~0x1 or int.from_bytes(head[5:9], "big") & 0x7FFFFFFF):
        return False  # flags other than ACK, or a stream id
    # A SETTINGS payload is a whole number of 6-byte settings.
    return len(head) < 3 or int.from_bytes(head[0:3], "big") % 6 == 0
