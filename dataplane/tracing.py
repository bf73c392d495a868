"""Trace context per hop: x-request-id, W3C traceparent and B3, rewritten in place.

Each sidecar is a hop and adds a span: the trace id is kept, the span id is new and the previous
span becomes the parent (traceparent's parent-id field; B3's x-b3-parentspanid or the fourth field
of the single ``b3`` header). A request with no trace context at all starts one (a traceparent with
a new trace id, sampled). ``x-request-id`` is added when absent (a request entering the mesh) and
otherwise left alone. Headers are never stripped; rewritten ones keep their position and the
client's spelling of the name, new ones are appended in lower case, so every other header's case
and order is untouched. Randomness is an argument (``bits(k)`` -> k random bits) for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from meshns.dataplane.http1.head import Headers

Bits = Callable[[int], int]

_REQUEST_ID: Final = b"x-request-id"
_TRACEPARENT: Final = b"traceparent"
_B3: Final = b"b3"
_B3_TRACE: Final = b"x-b3-traceid"
_B3_SPAN: Final = b"x-b3-spanid"
_B3_PARENT: Final = b"x-b3-parentspanid"
TRACE_HEADERS: Final = frozenset({_REQUEST_ID, _TRACEPARENT, _B3, _B3_TRACE, _B3_SPAN, _B3_PARENT})
_HEX: Final = frozenset(b"0123456789abcdef")


def _hex(n: int, width: int) -> bytes:
    return b"%0*x" % (width, n)


def _valid_hex(v: bytes, width: int) -> bool:
    return len(v) == width and _HEX.issuperset(v) and v.strip(b"0") != b""


_V4_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET: Final = (0x4000 << 64) | (0x8000 << 48)


def new_request_id(bits: Bits) -> str:
    """``str(uuid.UUID(int=bits(128), version=4))``, formatted by hand (a third of the cost)."""
    h = "%032x" % ((bits(128) & _V4_CLEAR) | _V4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def rewrite_trace(headers: Headers, bits: Bits, add_request_id: bool, new_span: bool = True) -> str:
    """Rewrite ``headers`` (in place) for one hop; returns the request id ("" when none).

    ``new_span=False`` (the server's sidecar) only fills in what is missing: a request id, and a
    trace when there is no context at all; an existing context passes through unchanged, so the
    app sees the span the client's sidecar made as its parent."""
    rid = tp = b3 = b3_trace = b3_span = b3_parent = -1
    for i, (name, _) in enumerate(headers):
        n = name.lower()
        if n not in TRACE_HEADERS:
            continue
        if n == _REQUEST_ID:
            rid = i
        elif n == _TRACEPARENT:
            tp = i
        elif n == _B3:
            b3 = i
        elif n == _B3_TRACE:
            b3_trace = i
        elif n == _B3_SPAN:
            b3_span = i
        else:
            b3_parent = i
    span = _hex(bits(64) or 1, 16)
    if new_span:
        _new_span(headers, span, bits, tp, b3, b3_trace, b3_span, b3_parent)
    if tp < 0 and b3 < 0 and b3_trace < 0:
        headers.append((_TRACEPARENT, b"00-" + _hex(bits(128) or 1, 32) + b"-" + span + b"-01"))
    if rid >= 0:
        return headers[rid][1].decode("latin-1")
    if not add_request_id:
        return ""
    request_id = new_request_id(bits)
    headers.append((_REQUEST_ID, request_id.encode("ascii")))
    return request_id


def _new_span(headers: Headers, span: bytes, bits: Bits, tp: int, b3: int, b3_trace: int, b3_span: int,
              b3_parent: int) -> None:
    """This hop's span: the previous span id becomes the parent, wherever the context is."""
    if tp >= 0:
        name, value = headers[tp]
        parts = value.strip().lower().split(b"-")
        if len(parts) >= 4 and _valid_hex(parts[1], 32) and len(parts[2]) == 16:
            parts[2] = span
            headers[tp] = (name, b"-".join(parts))
        else:  # malformed: W3C says restart the trace, in the same place
            headers[tp] = (name, b"00-" + _hex(bits(128) or 1, 32) + b"-" + span + b"-01")
    if b3 >= 0:
        name, value = headers[b3]
        parts = value.strip().split(b"-")
        if len(parts) >= 2:  # a bare sampling decision ("0", "1", "d") carries no span
            old = parts[1]
            headers[b3] = (name, b"-".join([parts[0], span, parts[2], old] if len(parts) >= 3
                                           else [parts[0], span]))
    if b3_trace >= 0:
        if b3_span >= 0:
            name, old = headers[b3_span]
            headers[b3_span] = (name, span)
            if b3_parent >= 0:
                headers[b3_parent] = (headers[b3_parent][0], old)
            else:
                headers.append((_B3_PARENT, old))
        else:
            headers.append((_B3_SPAN, span))
