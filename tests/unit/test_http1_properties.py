"""Property-based tests of the HTTP/1 request parsers (h11 and httptools adapters) and of the
protocol detector.

    (a) any bytes, split anywhere: only ParseError ever escapes, and the parser finishes
    (b) valid requests (methods, targets, headers, Content-Length or chunked bodies with
        extensions and trailers, pipelined), split at random points: both parsers report the
        generated heads and bodies and completions, identically
    (c) one defect in a valid request: both refuse, with the same status, one of 400, 413,
        414, 431, 501
    (d) detection: a verdict never changes as more bytes arrive, and every valid request line
        is HTTP
Plus field-level differentials where the h11 adapter imitates llhttp byte by byte: chunk lines,
header values, method tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_http1_parsers import run_response  # the response table's runner

from meshns.dataplane.http1.detect import DETECT_LIMIT, Http1, NeedMore, Opaque, detect
from meshns.dataplane.http1.head import ParseError, RequestHead
from meshns.dataplane.http1.parser import parser_kit
from meshns.dataplane.http1.strict import LLHTTP_METHODS

KITS = [parser_kit("h11"), parser_kit("httptools")]
REFUSALS = {400, 413, 414, 431, 501}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A guard against a hang (a parser looping forever), never a measure of speed.
pytestmark = pytest.mark.timeout(120)


@dataclass
class Rec:
    events: list[Any] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def on_request_begin(self) -> None:
        pass

    def on_request_head(self, h: RequestHead) -> None:
        self.events.append(("head", h.method, h.target, h.minor, h.headers, h.content_length, h.chunked))

    def on_request_body(self, data: bytes) -> None:
        self.body += data

    def on_request_complete(self) -> None:
        self.events.append(("body", bytes(self.body)))
        self.body.clear()
        self.events.append("end")


def feed(kit: int, data: bytes, cuts: list[int]) -> tuple[str, Any]:
    """Feed ``data`` split at ``cuts``: ("ok", events), ("reject", status) or ("upgrade", ...)."""
    rec = Rec()
    parser = KITS[kit].request(rec)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            if parser.feed(data[a:b]) is not None:
                return "upgrade", rec.events
    except ParseError as exc:
        return "reject", exc.status
    return "ok", rec.events


# (a) arbitrary bytes

http_words = st.sampled_from([
    b"GET", b"POST", b"get", b" ", b"  ", b"/", b"*", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"\n", b"\r",
    b"Host: r", b"Content-Length: 3", b"Content-Length: 1", b"Transfer-Encoding: chunked", b"Connection: close",
    b"Connection: upgrade", b"Upgrade: x", b"abc", b"0", b"3", b"zz", b":", b"\t", b"X-A: 1", b";", b"=", b"\x00",
    b'"', b"\x7f", b"\xff", b"0\r\n\r\n", b"5;a=b", b"Transfer-Encoding: gzip",
])
any_input = st.one_of(st.binary(max_size=300), st.lists(http_words, max_size=40).map(b"".join))
cut_points = st.lists(st.integers(min_value=1, max_value=400), max_size=8)


@FAST
@given(any_input, cut_points)
def test_a_only_parse_errors_escape(data: bytes, cuts: list[int]) -> None:
    for kit in range(2):
        verdict, detail = feed(kit, data, cuts)
        if verdict == "reject":
            assert detail in REFUSALS


# (b) valid requests

TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RESERVED = {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect", b"te",
            b"keep-alive", b"proxy-connection", b"trailer", b"http2-settings"}
names = st.text(TCHAR, min_size=1, max_size=12).map(str.encode).filter(lambda n: n.lower() not in RESERVED)
# Values as both parsers give them back: no leading or trailing whitespace.
values = st.lists(st.sampled_from([b"a", b"Z", b"0", b" ", b"\t", b"\x80", b"\xff", b"~", b'"', b"=", b",", b"!"]),
                  max_size=12).map(lambda parts: b"".join(parts).strip(b" \t") or b"v")
methods = st.sampled_from(sorted(LLHTTP_METHODS - {b"CONNECT"}))
targets = st.lists(st.sampled_from(list(b"abcXYZ019-._~!$&'()*+,;=:@%/?#")), max_size=30).map(
    lambda cs: b"/" + bytes(cs))
chunk_ext = st.sampled_from([b"", b";a", b";a=b", b';a="x y"', b";a=b;c", b";=b", b";a=", b";a;;b", b';q="\\"x"'])


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[bytes, tuple[Any, ...], bytes]:
    """(wire bytes, the head the parsers must report, the body)"""
    method = draw(methods)
    target = draw(targets)
    minor = draw(st.sampled_from([0, 1]))
    headers = [(b"Host", b"r"), *draw(st.lists(st.tuples(names, values), max_size=6))]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["cl", "chunked", "none"] if minor == 1 else ["cl", "none"]))
    if framing == "none" or (framing == "cl" and not body and draw(st.booleans())):
        body = b""
        framing = "none"
    wire_body = b""
    cl: int | None = None
    if framing == "cl":
        cl = len(body)
        headers.append((b"Content-Length", b"%d" % cl))
        wire_body = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=4))) - {0, len(body)})
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        for part in parts:
            wire_body += b"%x%s\r\n%s\r\n" % (len(part), draw(chunk_ext), part)
        wire_body += b"0" + draw(chunk_ext) + b"\r\n"
        if draw(st.booleans()):
            wire_body += b"X-Trailer: t\r\n"
        wire_body += b"\r\n"
    spaces = draw(st.sampled_from([b" ", b"  "]))
    head = method + spaces + target + b" HTTP/1.%d\r\n" % minor
    head += b"Host: r\r\n"  # fixed: the defects of (c) are made on it
    head += b"".join(n + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + v + b"\r\n" for n, v in headers[1:])
    head += b"\r\n"
    want = ("head", method, target, minor, headers, cl, framing == "chunked")
    return head + wire_body, want, body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_request(), min_size=1, max_size=3), cut_points, st.sampled_from([b"", b"\r\n"]))
def test_b_valid_requests_parse_identically(reqs: list[tuple[bytes, tuple[Any, ...], bytes]], cuts: list[int],
                                            lead: bytes) -> None:
    data = lead + b"".join(r[0] for r in reqs)
    expected: list[Any] = []
    for _, want, body in reqs:
        expected += [want, ("body", body), "end"]
        if want[3] == 0:
            break  # HTTP/1.0 without keep-alive: what follows is not read (RFC 9112 9.6)
    for kit in range(2):
        assert feed(kit, data, cuts) == ("ok", expected), KITS[kit].name


# (c) one defect

DEFECTS: list[tuple[str, Any]] = [
    ("nul in a value", lambda h: h.replace(b"Host: r", b"Host: r\x00")),
    ("ctl in a value", lambda h: h.replace(b"Host: r", b"Host: r\x01")),
    ("bare LF ends the request line", lambda h: h.replace(b"\r\n", b"\n", 1)),
    ("bare CR in a value", lambda h: h.replace(b"Host: r", b"Host: r\rx")),
    ("obs-fold", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\n folded\r\n")),
    ("space before the colon", lambda h: h.replace(b"Host:", b"Host :")),
    ("space in a name", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\nX Y: z\r\n")),
    ("CL and TE", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n")),
    ("TE and CL", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n")),
    ("two CLs", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\nContent-Length: 0\r\nContent-Length: 1\r\n")),
    ("TE gzip", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\nTransfer-Encoding: gzip\r\n")),
    ("TE chunked, then more", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\nTransfer-Encoding: chunked, x\r\n")),
    ("lowercase method", lambda h: h[:1].lower() + h[1:]),
    ("HTTP/2.0", lambda h: h.replace(b" HTTP/1.", b" HTTP/2.", 1)),
    ("no Host", lambda h: h.replace(b"Host: r\r\n", b"")),
    ("two Hosts", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\nHost: s\r\n")),
    ("request line over the limit", lambda h: h.replace(b" /", b" /" + b"a" * 17_000, 1)),
    ("head over the limit", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\nX-Big: " + b"b" * 70_000 + b"\r\n")),
    ("101 headers", lambda h: h.replace(b"Host: r\r\n", b"Host: r\r\n" + b"X-H: 1\r\n" * 100)),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_request(), st.sampled_from(DEFECTS), cut_points)
def test_c_one_defect_is_refused_alike(req: tuple[bytes, tuple[Any, ...], bytes], defect: tuple[str, Any],
                                       cuts: list[int]) -> None:
    data = req[0]
    end = data.index(b"\r\n\r\n") + 4
    head, rest = data[:end], data[end:]
    name, mutate = defect
    if name in ("CL and TE", "TE and CL", "two CLs", "TE gzip", "TE chunked, then more"):
        assume(b"Content-Length" not in head and b"Transfer-Encoding" not in head)
        rest = b""
    if name == "no Host":
        assume(req[1][3] == 1)  # HTTP/1.0 needs no Host
    bad = mutate(head) + rest
    got = [feed(kit, bad, cuts) for kit in range(2)]
    assert got[0][0] == "reject" and got[0][1] in REFUSALS, (name, got)
    assert got[0] == got[1], (name, got)


# field-level differentials against llhttp

CHUNK_LINE_BYTES = [b"0", b"5", b"f", b"F", b";", b"=", b'"', b"\\", b"a", b" ", b"\t", b",", b"/", b"\x01", b"\x80"]


@FAST
@given(st.lists(st.sampled_from(CHUNK_LINE_BYTES), min_size=1, max_size=10).map(b"".join))
def test_chunk_lines_judged_as_llhttp_judges_them(line: bytes) -> None:
    assume(line[:1] in (b"0", b"5", b"f", b"F"))
    size = int(line[:1], 16)
    data = (b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r\n"
            + b"x" * size + (b"\r\n0\r\n\r\n" if size else b"\r\n"))
    a, b = (feed(kit, data, []) for kit in range(2))
    assert (a[0], a[1] if a[0] == "reject" else None) == (b[0], b[1] if b[0] == "reject" else None), (line, a, b)


AUTHORITY_BYTES = [b"a", b"1", b":", b"@", b"[", b"]", b"/", b"?", b"%", b"-", b"!", b'"', b"#", b"<", b">", b"\\",
                   b"^", b"`", b"{", b"|", b"}", b"~"]


@FAST
@given(st.sampled_from([b"CONNECT ", b"GET http://", b"POST HTTP://", b"OPTIONS http://"]),
       st.lists(st.sampled_from(AUTHORITY_BYTES), min_size=1, max_size=8).map(b"".join))
def test_authorities_judged_as_llhttp_judges_them(start: bytes, authority: bytes) -> None:
    # llhttp refuses "#<>\^`{|} and a second "@" in CONNECT's target and in an absolute-form's
    # host; h11 takes any visible byte. Found by the fuzz harness's no-stall check.
    data = start + authority + b" HTTP/1.1\r\nHost: r\r\n\r\n"
    a, b = (feed(kit, data, []) for kit in range(2))
    assert a == b, (authority, a, b)


CHUNKED_RESPONSE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@FAST
@given(st.lists(st.sampled_from(CHUNK_LINE_BYTES), min_size=1, max_size=10).map(b"".join), st.sampled_from([1, 3, 1 << 20]))
def test_response_chunk_lines_judged_as_llhttp_judges_them(line: bytes, step: int) -> None:
    # The h11 adapter frames a response's chunks through strict.ChunkFramer as it does a
    # request's: h11 alone takes "2;", "2 " and "2; a=b", which llhttp refuses.
    assume(line[:1] in (b"0", b"5", b"f", b"F"))
    size = int(line[:1], 16)
    data = CHUNKED_RESPONSE + line + b"\r\n" + b"x" * size + (b"\r\n0\r\n\r\n" if size else b"\r\n")
    a, b = (run_response(kit, data, step, False, False) for kit in range(2))
    assert a == b, (line, a, b)


TRAILER_NAMES = [b"X-A", b"Content-Length", b"content-length", b"Transfer-Encoding", b"TRANSFER-ENCODING", b"X A"]
TRAILER_VALUE_BYTES = [b"", b" ", b"\t", b"1", b"chunked", b"gzip", b",", b"a", b"\x01", b"\x7f", b"\x80"]


@FAST
@given(st.lists(st.tuples(st.sampled_from(TRAILER_NAMES),
                          st.lists(st.sampled_from(TRAILER_VALUE_BYTES), max_size=4).map(b"".join)),
                min_size=1, max_size=3),
       st.sampled_from([1, 1 << 20]))
def test_response_trailers_judged_as_llhttp_judges_them(fields: list[tuple[bytes, bytes]], step: int) -> None:
    # llhttp's response parser refuses a Content-Length trailer, and an empty Transfer-Encoding,
    # but takes any other Transfer-Encoding value (h11 alone refuses all but "chunked").
    trailers = b"".join(n + b":" + v + b"\r\n" for n, v in fields)
    data = CHUNKED_RESPONSE + b"2\r\nhi\r\n0\r\n" + trailers + b"\r\n"
    a, b = (run_response(kit, data, step, False, False) for kit in range(2))
    assert a == b, (fields, a, b)


@FAST
@given(st.binary(min_size=1, max_size=6).filter(lambda v: b"\r" not in v and b"\n" not in v))
def test_header_values_judged_as_llhttp_judges_them(value: bytes) -> None:
    data = b"GET / HTTP/1.1\r\nHost: r\r\nX-V: " + value + b"\r\n\r\n"
    a, b = (feed(kit, data, []) for kit in range(2))
    assert a == b, (value, a, b)


@FAST
@given(st.text(TCHAR, min_size=1, max_size=10).map(str.encode))
def test_methods_judged_as_llhttp_judges_them(method: bytes) -> None:
    data = method + b" / HTTP/1.1\r\nHost: r\r\n\r\n"
    a, b = (feed(kit, data, []) for kit in range(2))
    assert a == b, (method, a, b)


# (d) detection

@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=120), st.lists(http_words, max_size=20).map(b"".join)))
def test_d_detection_never_changes_its_mind(data: bytes) -> None:
    decided = None
    for n in range(len(data) + 1):
        got = detect(data[:n])
        if decided is not None:
            assert got == decided, (data[:n], got, decided)
        elif not isinstance(got, NeedMore):
            decided = got


def test_d_detection_at_the_limit_is_final() -> None:
    data = b"GET /" + b"a" * (DETECT_LIMIT * 2)
    assert detect(data[:DETECT_LIMIT]) == detect(data) == Http1(b"GET")
    assert isinstance(detect(b"x" * DETECT_LIMIT + b" / HTTP/1.1\r\n"), Opaque)


@FAST
@given(valid_request())
def test_d_every_valid_request_is_http(req: tuple[bytes, tuple[Any, ...], bytes]) -> None:
    data = req[0]
    method = req[1][1]
    assert detect(data) == Http1(method)
    line_end = data.index(b"\r\n") + 2
    assert detect(data[:line_end]) == Http1(method)  # decided within the request line


@pytest.mark.parametrize("method", sorted(LLHTTP_METHODS | {b"PRI", b"DESCRIBE", b"SETUP", b"PLAY", b"RECORD",
                                                            b"FLUSH", b"GET_PARAMETER", b"get", b"Post", b"FOO"}))
def test_the_method_list_is_llhttps(method: bytes) -> None:
    target = b"db:5432" if method == b"CONNECT" else b"/"
    data = method + b" " + target + b" HTTP/1.1\r\nHost: r\r\n\r\n"
    a, b = (feed(kit, data, []) for kit in range(2))
    assert a == b, (method, a, b)
    assert (a[0] != "reject") == (method in LLHTTP_METHODS)
