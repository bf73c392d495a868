"""llhttp's request rules, for the h11 adapter: a proxy must not accept what its other parser
refuses, and must answer the same status when it refuses.

h11 is lenient where llhttp is strict (any method token, CTL and DEL in header values, bare LF,
obs-fold, merged duplicate Content-Length, free-form chunk extensions, chunk sizes with trailing
spaces) and strict where llhttp is lenient (several spaces between the parts of the request line).
So the h11 adapter holds a request head back until it is complete, checks it here in wire order
as llhttp would, and hands h11 the head with its request line single-spaced; a chunked body, a
request's or a response's, goes through ``ChunkFramer``, which checks each chunk line as llhttp
does and hands h11 canonical chunk framing. Everything here is pure and table-tested against
llhttp (tests/unit).

Known difference, failing closed: llhttp takes a chunk size with any number of leading zeros; h11
takes at most 20 hex digits, so the framer refuses longer size fields too (400), which llhttp
would have taken.
"""

from __future__ import annotations

import re
from typing import Final

from meshns.dataplane.http1.head import (
    HTTP_VERSIONS,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Headers,
    ParseError,
)

# The methods llhttp's HTTP request parser takes (PRI only as the HTTP/2 preface, which is not
# HTTP/1); anything else is "Invalid method encountered", a 400.
LLHTTP_METHODS: Final = frozenset({
    b"DELETE", b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"TRACE", b"COPY", b"LOCK", b"MKCOL",
    b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND", b"REBIND", b"UNBIND", b"ACL",
    b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE",
    b"UNSUBSCRIBE", b"PATCH", b"PURGE", b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE", b"QUERY",
    b"CONNECT",
})
# The memory bound of a head still coming in, in both adapters: a valid head never reaches it.
PENDING_LIMIT: Final = 2 * MAX_HEAD_BYTES + 4096

_TCHAR: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE: Final = re.compile(rb"(" + _TCHAR + rb"+) +([\x21-\x7e]+) +HTTP/([0-9])\.([0-9])")
# A header (or trailer) line: no space before the colon, visible characters, SP, HTAB and
# obs-text in the value; no CTL, no DEL (llhttp's "Invalid header value char").
_FIELD: Final = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*([\t\x20-\x7e\x80-\xff]*)")
_SPACES: Final = re.compile(rb" +")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]+")
# After the size: ;name[=value] repeated. llhttp takes an empty name before "=" or ";" but not at
# the end of the line, as the value a token, a quoted string or a token run straight into one
# quoted string (a=5"x"), and no whitespace anywhere. The framer drops extensions either way.
_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT: Final = re.compile(
    rb"(?:;(?:" + _TCHAR + rb"+|(?=[;=]))(?:=" + _TCHAR + rb"*(?:" + _QUOTED + rb")?)?)*")
_MAX_CHUNK: Final = 1 << 64  # llhttp's chunk size is a uint64
_H11_SIZE_DIGITS: Final = 20
_LINE_OVERHEAD: Final = 10  # two SP and "HTTP/1.x"
_HEADER_OVERHEAD: Final = 4  # ": " and CRLF, as the httptools adapter counts a header


def _bare_cr_lf(region: bytes) -> bool:
    return b"\n" in region.replace(b"\r\n", b"") or b"\r" in region.replace(b"\r\n", b"")


class HeadCollector:
    """One request head coming in (h11 adapter): each new byte is checked once, so a client
    sending a byte at a time costs linear time; what is already certain is refused at once
    (bare CR or LF, obs-fold, a request line over the limit, more bytes than any valid head)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self._checked = 0
        self._line_end = -1

    def __bool__(self) -> bool:
        return bool(self.buf)

    def add(self, data: bytes) -> tuple[bytes, Headers, bytes] | None:
        """(the checked head, its fields, the bytes after it) once its empty line came, else None."""
        buf = self.buf
        start = self._checked
        buf += data
        end = buf.find(b"\r\n\r\n", max(0, start - 3))
        if end >= 0:
            head, rest = bytes(buf[:end + 4]), bytes(buf[end + 4:])
            self._reset()
            checked, fields = check_request_head(head)
            return checked, fields, rest
        stop = len(buf) - 1 if buf.endswith(b"\r") else len(buf)  # its LF may be in the next read
        if _bare_cr_lf(bytes(buf[start:stop])):
            raise ParseError(400, "bare CR or LF in head")
        ctx = max(0, start - 2)
        if buf.find(b"\r\n ", ctx) >= 0 or buf.find(b"\r\n\t", ctx) >= 0:
            raise ParseError(400, "obsolete line folding")
        self._checked = stop
        if self._line_end < 0:
            self._line_end = buf.find(b"\r\n", max(0, start - 1))
            line = bytes(buf if self._line_end < 0 else buf[:self._line_end])
            if len(line) > MAX_REQUEST_LINE and len(_SPACES.sub(b" ", line)) > MAX_REQUEST_LINE:
                raise ParseError(414, "request line too long")
        if len(buf) > PENDING_LIMIT:
            raise ParseError(431, "request head too large")
        return None


def check_request_head(head: bytes) -> tuple[bytes, Headers]:
    """A complete request head (through its empty line): refused as llhttp would refuse it, or
    returned with its request line single-spaced (the only form h11 takes), with its header
    fields as on the wire, trimmed like llhttp's (h11 lowercases some values, Transfer-Encoding's:
    the adapters must report the same fields)."""
    if _bare_cr_lf(head[:-4]):
        raise ParseError(400, "bare CR or LF in head")
    lines = head[:-4].split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise ParseError(400, "malformed request line")
    method, target, major, minor = m.groups()
    if method not in LLHTTP_METHODS:
        raise ParseError(400, "invalid method")
    if major + b"." + minor not in HTTP_VERSIONS:
        raise ParseError(400, "unsupported HTTP version")
    if len(method) + len(target) + _LINE_OVERHEAD > MAX_REQUEST_LINE:
        raise ParseError(414, "request line too long")
    fields = _check_fields(lines[1:], len(target))
    return b"%s %s HTTP/%s.%s\r\n" % (method, target, major, minor) + head[len(lines[0]) + 2:], fields


def _check_fields(lines: list[bytes], size: int) -> Headers:
    """Header lines in wire order, with llhttp's framing refusals where llhttp makes them: a
    Content-Length next to a Transfer-Encoding (400, at the second of the two), an empty
    Transfer-Encoding or anything after a "chunked" coding (501, at once)."""
    seen_cl = seen_te = te_final_chunked = False
    fields: Headers = []
    for count, line in enumerate(lines, 1):
        m = _FIELD.fullmatch(line)
        if m is None:
            if line[:1] in (b" ", b"\t"):
                raise ParseError(400, "obsolete line folding")
            raise ParseError(400, "malformed header line")
        name, value = m.groups()
        fields.append((name, value.rstrip(b" \t")))
        size += len(name) + len(value) + _HEADER_OVERHEAD
        if size > MAX_HEAD_BYTES:
            raise ParseError(431, "request head too large")
        if count > MAX_HEADERS:
            raise ParseError(431, "too many headers")
        lname = name.lower()
        if lname == b"content-length":
            if seen_te:
                raise ParseError(400, "Content-Length with Transfer-Encoding")
            if seen_cl:
                raise ParseError(400, "duplicate Content-Length")
            if not value.strip(b" \t").isdigit():
                raise ParseError(400, "bad Content-Length")
            seen_cl = True
        elif lname == b"transfer-encoding":
            if seen_cl:
                raise ParseError(400, "Content-Length with Transfer-Encoding")
            codings = [c.strip(b" \t").lower() for c in value.split(b",")]
            if not value.strip(b" \t"):
                raise ParseError(501, "empty Transfer-Encoding")
            if te_final_chunked or b"chunked" in codings[:-1]:
                raise ParseError(501, "a coding after chunked")
            seen_te = True
            te_final_chunked = codings[-1] == b"chunked"
    return fields


def chunk_size(line: bytes) -> int:
    """The size of a chunk-size line (with its CRLF), checked as llhttp checks it."""
    if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
        raise ParseError(400, "bare CR or LF in chunk size line")
    body = line[:-2]
    m = _HEX.match(body)
    if m is None:
        raise ParseError(400, "invalid chunk size")
    if _CHUNK_EXT.fullmatch(body, m.end()) is None:
        raise ParseError(400, "invalid chunk extension")
    digits = m.group()
    size = int(digits, 16)
    if size >= _MAX_CHUNK:
        raise ParseError(400, "chunk size overflow")
    if len(digits) > _H11_SIZE_DIGITS:
        raise ParseError(400, "chunk size field too long")
    return size


def check_trailer_line(line: bytes, response: bool = False) -> None:
    """A trailer field: a header line, and not a framing field (llhttp applies its
    Transfer-Encoding and Content-Length rules to trailers too; RFC 9110 6.5.1 forbids them).
    llhttp's response parser is the laxer one: it refuses a Content-Length there but takes a
    Transfer-Encoding that is not empty. Both adapters drop trailers, so what they take is never
    forwarded; what matters is that they refuse the same responses."""
    m = _FIELD.fullmatch(line[:-2]) if line.endswith(b"\r\n") and b"\r" not in line[:-2] else None
    if m is None:
        raise ParseError(400, "malformed trailer line")
    name = m.group(1).lower()
    if name == b"content-length" or (name == b"transfer-encoding"
                                     and (not response or not m.group(2).strip(b" \t"))):
        raise ParseError(400, "framing field in the trailers")


_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ChunkFramer:
    """One chunked body: checks the raw framing and returns it canonical (sizes in plain hex, no
    extensions), so h11 sees only framing llhttp would also have taken. A response's trailers
    are checked by llhttp's response rule and not handed on: h11 refuses any Transfer-Encoding
    value but "chunked" there, which llhttp's response parser takes (check_trailer_line)."""

    def __init__(self, response: bool = False) -> None:
        self._state = _SIZE
        self._line = b""
        self._left = 0
        self._response = response

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """(bytes for h11, the bytes after the body, or None while the body goes on)."""
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - i)
                out.append(data[i:i + take])
                self._left -= take
                i += take
                if not self._left:
                    self._state = _DATA_END
            elif state == _DATA_END:
                need = 2 - len(self._line)
                self._line += data[i:i + need]
                i += min(need, n - i)
                got = self._line
                if b"\r\n"[:len(got)] != got:
                    raise ParseError(400, "no CRLF after chunk data")
                if len(got) == 2:
                    out.append(b"\r\n")
                    self._line = b""
                    self._state = _SIZE
            else:
                j = data.find(b"\n", i)
                if j < 0:
                    self._line += data[i:]
                    if len(self._line) > PENDING_LIMIT:
                        raise ParseError(431 if state == _TRAILER else 400, "chunk line too long")
                    break
                line = self._line + data[i:j + 1]
                self._line = b""
                i = j + 1
                if state == _SIZE:
                    size = chunk_size(line)
                    if size:
                        out.append(b"%x\r\n" % size)
                        self._left = size
                        self._state = _DATA
                    else:
                        out.append(b"0\r\n")
                        self._state = _TRAILER
                elif line == b"\r\n":
                    out.append(line)
                    return b"".join(out), data[i:]
                else:
                    check_trailer_line(line, self._response)
                    if not self._response:
                        out.append(line)
        return b"".join(out), None
