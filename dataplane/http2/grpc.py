"""gRPC facts the HTTP/2 proxy needs: status codes, deadlines, grpc-message, error responses.

Nothing here does I/O. The proxy does not speak protobuf; it only has to recognise gRPC traffic,
read the outcome of a call for metrics and retries, forward a deadline that shrank while the proxy
held the request, and answer with a well-formed gRPC error when it fails a call itself. A gRPC
client ignores the HTTP status of a 200 response and reads only ``grpc-status``, so a plain HTTP
503 from the proxy would surface as an opaque UNKNOWN/INTERNAL; the Trailers-Only response gives it
the code it can act on (retry on UNAVAILABLE, give up on DEADLINE_EXCEEDED).

References: gRPC "PROTOCOL-HTTP2.md" (content-type, grpc-timeout, grpc-message percent-encoding,
Trailers-Only) and "http-grpc-status-mapping.md"; Envoy's grpc retry_on conditions.

Headers are HTTP/2 style: ``(name, value)`` byte pairs with lower-case names. When a header the
spec allows once appears several times, the first one counts, as in grpc-go.
"""

from __future__ import annotations

import math
import re
from typing import Final

Headers = list[tuple[bytes, bytes]]

OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
ALREADY_EXISTS: Final = 6
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
FAILED_PRECONDITION: Final = 9
ABORTED: Final = 10
OUT_OF_RANGE: Final = 11
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
DATA_LOSS: Final = 15
UNAUTHENTICATED: Final = 16

STATUS_NAMES: Final[dict[int, str]] = {
    OK: "OK",
    CANCELLED: "CANCELLED",
    UNKNOWN: "UNKNOWN",
    INVALID_ARGUMENT: "INVALID_ARGUMENT",
    DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    NOT_FOUND: "NOT_FOUND",
    ALREADY_EXISTS: "ALREADY_EXISTS",
    PERMISSION_DENIED: "PERMISSION_DENIED",
    RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    FAILED_PRECONDITION: "FAILED_PRECONDITION",
    ABORTED: "ABORTED",
    OUT_OF_RANGE: "OUT_OF_RANGE",
    UNIMPLEMENTED: "UNIMPLEMENTED",
    INTERNAL: "INTERNAL",
    UNAVAILABLE: "UNAVAILABLE",
    DATA_LOSS: "DATA_LOSS",
    UNAUTHENTICATED: "UNAUTHENTICATED",
}

# Envoy/Istio retry_on conditions that test grpc-status. Must agree with _GRPC_CODES in
# policy/retry.py (the HTTP/1 retry path); tests/unit/test_http2_grpc.py checks that it does.
GRPC_RETRY_CONDITIONS: Final[dict[str, int]] = {
    "cancelled": CANCELLED,
    "deadline-exceeded": DEADLINE_EXCEEDED,
    "resource-exhausted": RESOURCE_EXHAUSTED,
    "internal": INTERNAL,
    "unavailable": UNAVAILABLE,
}

_CONTENT_TYPE: Final = b"content-type"
_GRPC_STATUS: Final = b"grpc-status"
_GRPC_CT: Final = b"application/grpc"
_INT32_MAX: Final = 2**31 - 1

# --- grpc-timeout -------------------------------------------------------------------------------

# "Timeout → 1*8DIGIT TimeoutUnit". fullmatch, and [0-9] rather than \d, so that a trailing newline
# or a non-ASCII digit cannot slip through.
_TIMEOUT_RE: Final = re.compile(rb"[0-9]{1,8}[HMSmun]")
_TIMEOUT_MAX_COUNT: Final = 99_999_999
# (unit, seconds per unit as a numerator, as a denominator): sub-second units divide by an exact
# integer so that b"100m" parses to exactly 0.1 (0.1 == 100 / 1000, while 100 * 1e-3 is not 0.1).
_UNITS: Final[tuple[tuple[bytes, int, int], ...]] = (
    (b"n", 1, 1_000_000_000),
    (b"u", 1, 1_000_000),
    (b"m", 1, 1_000),
    (b"S", 1, 1),
    (b"M", 60, 1),
    (b"H", 3600, 1),
)
_UNIT_SCALE: Final = {unit[0]: (mul, div) for unit, mul, div in _UNITS}
_TIMEOUT_MAX_S: Final = float(_TIMEOUT_MAX_COUNT * 3600)


def _timeout_seconds(count: int, mul: int, div: int) -> float:
    return float(count * mul) if div == 1 else count / div


def parse_grpc_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value; None when it does not follow the grammar exactly.

    A malformed timeout is reported, not guessed at: the caller decides whether to reject the call
    or to ignore the header (grpc-go rejects it).
    """
    if _TIMEOUT_RE.fullmatch(value) is None:
        return None
    mul, div = _UNIT_SCALE[value[-1]]
    return _timeout_seconds(int(value[:-1]), mul, div)


def _ceil_count(seconds: float, mul: int, div: int) -> int | None:
    """The smallest count of this unit whose parsed value is not shorter than ``seconds``, or None
    when that count needs more than 8 digits."""
    exact = seconds * div / mul
    if exact > _TIMEOUT_MAX_COUNT + 1:
        # Decided before the fix-up loops below: they step by one, which is only cheap while
        # floats still hold every integer (far beyond 8 digits, but not beyond 2**53).
        return None
    count = max(1, math.ceil(exact))
    # The float product can land a hair off an integer (0.07 * 1e9 == 70000000.00000001, whose
    # ceiling adds a spurious nanosecond). Settle on the exact answer in terms of what the peer will
    # parse; each loop runs at most a step or two.
    while count > 1 and _timeout_seconds(count - 1, mul, div) >= seconds:
        count -= 1
    while _timeout_seconds(count, mul, div) < seconds:
        count += 1
    return count if count <= _TIMEOUT_MAX_COUNT else None


def format_grpc_timeout(seconds: float) -> bytes:
    """Encode a deadline to forward upstream, e.g. what is left of the caller's after queueing.

    The finest unit whose count fits in 8 digits keeps the most precision; the count is rounded
    up, because a forwarded deadline shorter than the caller's would make the upstream give up on
    work the caller is still waiting for, while one unit longer only wastes that unit. Zero or
    negative (already expired) becomes b"1n": a grpc-timeout cannot say "zero", and the smallest
    value lets the upstream fail the call at once. Beyond 99999999 hours (and infinity) the value
    is capped at b"99999999H", the largest the grammar allows.
    """
    if not seconds > 0:  # also catches NaN
        return b"1n"
    if seconds >= _TIMEOUT_MAX_S:
        return b"99999999H"
    for unit, mul, div in _UNITS:
        count = _ceil_count(seconds, mul, div)
        if count is not None:
            return b"%d%s" % (count, unit)
    return b"99999999H"  # unreachable: seconds < _TIMEOUT_MAX_S fits in hours


# --- headers ------------------------------------------------------------------------------------


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case, as HTTP/2 carries names)."""
    for n, v in headers:
        if n == name:
            return v
    return None


def is_grpc(headers: Headers) -> bool:
    """``content-type`` is application/grpc, application/grpc+<codec> or application/grpc;<params>.

    The exact prefix test matters: "application/grpc-web" is a different protocol (its framing
    differs and a browser sits behind it), and must not be treated as gRPC.
    """
    ct = header(headers, _CONTENT_TYPE)
    if ct is None:
        return False
    ct = ct.lower()
    if not ct.startswith(_GRPC_CT):
        return False
    rest = ct[len(_GRPC_CT) :]
    return rest == b"" or rest[:1] in (b"+", b";")


def grpc_status_of(headers: Headers) -> int | None:
    """The ``grpc-status`` header as an int; None when absent or not a plain decimal number.

    Codes above 16 are returned as is: the spec lets servers send codes it does not define, and a
    metric label with the real number is more useful than a guess. A value past int32 cannot be a
    status at all.
    """
    value = header(headers, _GRPC_STATUS)
    if value is None or not value.isdigit():  # bytes.isdigit is ASCII-only: no signs, spaces
        return None
    # Bound the length before int(): leading zeros are harmless, but a kilobyte of digits is not a
    # status and should not cost a big-int parse.
    significant = value.lstrip(b"0")
    if len(significant) > 10:
        return None
    code = int(value)
    return code if code <= _INT32_MAX else None


# --- status mapping -----------------------------------------------------------------------------

# gRPC "HTTP to gRPC Status Code Mapping": the code a client derives from a non-gRPC HTTP answer.
_HTTP_TO_GRPC: Final[dict[int, int]] = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}

# Response flags that say more than the HTTP status the proxy picked for the error. UT is answered
# with 504, which the HTTP table would turn into UNAVAILABLE (retry!), yet the call's deadline is
# gone; NR is 404 anyway but stated here so the intent does not hang on the status.
_FLAG_TO_GRPC: Final[dict[str, int]] = {
    "UT": DEADLINE_EXCEEDED,
    "RBAC": PERMISSION_DENIED,
    "NR": UNIMPLEMENTED,
    "DC": CANCELLED,
    "UO": UNAVAILABLE,
}


def http_to_grpc_status(http_status: int) -> int:
    return _HTTP_TO_GRPC.get(http_status, UNKNOWN)


def local_grpc_status(http_status: int, flag: str) -> int:
    """grpc-status of an error the proxy generates itself, from its response flag(s) and status.

    ``flag`` may also be the comma-separated list the proxy logs (flags.FLAGS_HEADER); flags are in
    the order they happened, so the first one with a gRPC meaning is the cause and wins.
    """
    for f in flag.split(","):
        code = _FLAG_TO_GRPC.get(f.strip())
        if code is not None:
            return code
    return http_to_grpc_status(http_status)


# --- grpc-message -------------------------------------------------------------------------------

_PERCENT: Final = 0x25
# Byte -> its encoded form. Precomputed so encoding is one lookup per byte.
_ENCODE_TABLE: Final[tuple[bytes, ...]] = tuple(
    bytes([b]) if 0x20 <= b <= 0x7E and b != _PERCENT else b"%%%02X" % b for b in range(256)
)
_PASS_THROUGH: Final = re.compile(rb"[\x20-\x24\x26-\x7e]*")
_PERCENT_SEQ: Final = re.compile(rb"%([0-9A-Fa-f]{2})")


def encode_grpc_message(message: str) -> bytes:
    """Percent-encode a grpc-message: UTF-8, then every byte outside 0x20-0x7E, and '%', as %XX.

    A character that has no UTF-8 form (a lone surrogate, e.g. from a surrogateescape'd OS error)
    becomes '?': an error message must never raise while the proxy is reporting another error.
    """
    data = message.encode("utf-8", "replace")
    if _PASS_THROUGH.fullmatch(data):
        return data  # the usual case: plain ASCII text
    return b"".join(_ENCODE_TABLE[b] for b in data)


def decode_grpc_message(value: bytes) -> str:
    """Inverse of ``encode_grpc_message``; never raises, as the spec asks of receivers.

    A '%' not followed by two hex digits is kept literally, and bytes that are not valid UTF-8
    after decoding become U+FFFD, so a broken message from a peer still reaches the log.
    """
    if b"%" in value:
        value = _PERCENT_SEQ.sub(lambda m: bytes([int(m[1], 16)]), value)
    return value.decode("utf-8", "replace")


# --- responses and retries ----------------------------------------------------------------------


def trailers_only_response(grpc_status: int, message: str, extra: Headers | None = None) -> Headers:
    """The head of a gRPC "Trailers-Only" response for an error the proxy generates.

    HTTP status 200 with grpc-status in the one HEADERS frame (sent with END_STREAM): that is how
    gRPC servers fail a call before any message, and the only form every client reads correctly.
    """
    head: Headers = [
        (b":status", b"200"),
        (b"content-type", _GRPC_CT),
        (b"grpc-status", b"%d" % grpc_status),
        (b"grpc-message", encode_grpc_message(message)),
    ]
    if extra:
        head.extend(extra)
    return head


def retry_condition_met(condition: str, grpc_status: int | None) -> bool:
    """Whether one retry_on condition holds for a response with this grpc-status.

    Only the five gRPC conditions are known here; any other condition (5xx, reset, ...) is the
    HTTP retry logic's business, so it is False rather than an error.
    """
    code = GRPC_RETRY_CONDITIONS.get(condition)
    return code is not None and grpc_status == code
