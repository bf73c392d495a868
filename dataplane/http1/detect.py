"""Protocol detection on the client's first bytes: is this an HTTP/1.x request line?

A pure function of the bytes seen so far, tested on every prefix of real captures (the habit of
linkerd2-proxy's ``http/detect``). It answers ``Http1`` once a whole request line
``METHOD SP target SP HTTP/1.x CRLF`` is there, ``Opaque`` as soon as the bytes can no longer
become one (or ``DETECT_LIMIT`` bytes went by without a line end), and ``NeedMore`` otherwise.
The HTTP/2 connection preface (prior knowledge, h2c) answers ``Http2``; until 24 bytes are
there a prefix of it needs more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DETECT_LIMIT: Final = 8192
# RFC 9110 tchar: what a method token may contain.
_TCHAR: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSION: Final = b"HTTP/1."


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


def detect(data: bytes) -> Detected:
    """Classify the first bytes of a connection (everything the client sent so far)."""
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
    method_end = i
    i += 1
    start = i
    while i < n and 0x21 <= data[i] <= 0x7E:
        i += 1
    if i == n:
        return _more(n)
    if i == start or data[i] != 0x20:
        return Opaque("bad request target")
    i += 1
    tail = data[i:i + 10]  # "HTTP/1.x\r\n"
    want = _VERSION[:len(tail)]
    if tail[:len(want)] != want:
        return Opaque("not HTTP/1.x")
    if len(tail) <= len(_VERSION):
        return _more(n)
    if tail[7] not in b"01":
        return Opaque("not HTTP/1.0 or 1.1")
    if len(tail) > 8 and tail[8] != 0x0D:
        return Opaque("no CR after version")
    if len(tail) > 9 and tail[9] != 0x0A:
        return Opaque("no LF after CR")
    if len(tail) < 10:
        return _more(n)
    return Http1(data[:method_end])


def _more(n: int) -> Detected:
    return NEED_MORE if n < DETECT_LIMIT else Opaque("no request line within the detection limit")


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
