"""gRPC facts of the HTTP/2 proxy as tables: status codes, content-type, grpc-timeout,
grpc-message percent-encoding, Trailers-Only error heads and retry conditions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshns.dataplane.http2 import grpc
from meshns.dataplane.http2.grpc import (
    GRPC_RETRY_CONDITIONS,
    STATUS_NAMES,
    Headers,
    decode_grpc_message,
    encode_grpc_message,
    format_grpc_timeout,
    grpc_status_of,
    http_to_grpc_status,
    is_grpc,
    local_grpc_status,
    parse_grpc_timeout,
    retry_condition_met,
    trailers_only_response,
)
from meshns.dataplane.policy.retry import Outcome, retryable
from meshns.snapshot import RetryPolicy

SPEC_CODES = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
]  # fmt: skip


@pytest.mark.parametrize(("code", "name"), list(enumerate(SPEC_CODES)))
def test_status_constants_and_names(code: int, name: str) -> None:
    assert getattr(grpc, name) == code
    assert STATUS_NAMES[code] == name


def test_status_names_cover_exactly_the_spec() -> None:
    assert sorted(STATUS_NAMES) == list(range(17))


# --- is_grpc ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ([(b"content-type", b"application/grpc")], True),
        ([(b"content-type", b"application/grpc+proto")], True),
        ([(b"content-type", b"application/grpc+json")], True),
        ([(b"content-type", b"application/grpc;charset=utf-8")], True),
        ([(b"content-type", b"Application/GRPC")], True),  # media types are case-insensitive
        ([(b"content-type", b"APPLICATION/GRPC+PROTO")], True),
        ([(b":method", b"POST"), (b"content-type", b"application/grpc"), (b"te", b"trailers")], True),
        ([(b"content-type", b"application/grpc-web")], False),  # another protocol
        ([(b"content-type", b"application/grpc-web+proto")], False),
        ([(b"content-type", b"application/grpcx")], False),
        ([(b"content-type", b"application/json")], False),
        ([(b"content-type", b"text/grpc")], False),
        ([(b"content-type", b"")], False),
        ([(b"content-type", b"application/grp")], False),
        ([(b"content-type", b" application/grpc")], False),
        ([], False),
        ([(b"x-content-type", b"application/grpc")], False),
        ([(b"content-type", b"application/json"), (b"content-type", b"application/grpc")], False),  # first wins
    ],
)
def test_is_grpc(headers: Headers, want: bool) -> None:
    assert is_grpc(headers) is want


# --- grpc_status_of -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        *[(str(c).encode(), c) for c in range(17)],
        (b"17", 17),  # unknown to the spec, returned as is
        (b"1000", 1000),
        (b"2147483647", 2**31 - 1),
        (b"2147483648", None),  # past int32
        (b"99999999999", None),
        (b"014", 14),  # leading zeros are still a decimal number
        (b"0000000000000000000014", 14),
        (b"", None),
        (b"-1", None),
        (b"+1", None),
        (b" 14", None),
        (b"14 ", None),
        (b"1 4", None),
        (b"0x0e", None),
        (b"14.0", None),
        (b"OK", None),
        ("\u0661".encode(), None),  # ARABIC-INDIC DIGIT ONE: not an ASCII digit
        (b"1" * 5000, None),  # no huge int parse
    ],
)
def test_grpc_status_of(value: bytes, want: int | None) -> None:
    assert grpc_status_of([(b":status", b"200"), (b"grpc-status", value)]) == want


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ([], None),
        ([(b":status", b"200"), (b"content-type", b"application/grpc")], None),
        ([(b"grpc-status", b"14"), (b"grpc-status", b"0")], 14),  # first wins
        ([(b"grpc-message", b"x"), (b"grpc-status", b"3")], 3),
        ([(b"x-grpc-status", b"3")], None),
    ],
)
def test_grpc_status_of_header_lookup(headers: Headers, want: int | None) -> None:
    assert grpc_status_of(headers) == want


# --- grpc-timeout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"100m", 0.1),
        (b"250u", 0.00025),
        (b"5n", 5e-9),
        (b"0S", 0.0),  # grammar-valid; what a zero deadline means is the caller's call
        (b"0n", 0.0),
        (b"00000001S", 1.0),
        (b"99999999H", 99_999_999 * 3600.0),  # 8 digits: the largest allowed
        (b"99999999n", 0.099999999),
        (b"12345678m", 12345.678),
        (b"1000000u", 1.0),
    ],
)
def test_parse_grpc_timeout(value: bytes, want: float) -> None:
    got = parse_grpc_timeout(value)
    assert got == pytest.approx(want, rel=1e-15, abs=0.0)
    assert isinstance(got, float)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"S",  # no digits
        b"1",  # no unit
        b"123456789S",  # 9 digits
        b"000000001S",  # 9 digits, even if the value is small
        b"1s",  # units are case-sensitive: s is not a unit
        b"1h",
        b"1x",
        b"1ms",
        b"1SS",
        b"-1S",
        b"+1S",
        b" 1S",
        b"1S ",
        b"1 S",
        b"1S\n",  # a regex $ would let this through
        b"1.5S",
        b"1e3m",
        b"0x1S",
        b"S1",
        "\u0661S".encode(),  # non-ASCII digit
        "1\u00b5".encode(),  # micro sign is not "u"
    ],
)
def test_parse_grpc_timeout_malformed(value: bytes) -> None:
    assert parse_grpc_timeout(value) is None


@pytest.mark.parametrize(
    ("seconds", "want"),
    [
        (0.0, b"1n"),  # expired: the smallest value, never "0"
        (-5.0, b"1n"),
        (float("nan"), b"1n"),
        (1e-12, b"1n"),  # below a nanosecond rounds up
        (1e-9, b"1n"),
        (1.5e-9, b"2n"),
        (0.07, b"70000000n"),  # no spurious +1 from 0.07 * 1e9 == 70000000.00000001
        (0.099999999, b"99999999n"),  # the largest count in nanoseconds
        (0.0999999991, b"100000u"),  # one more nanosecond needs 9 digits: microseconds, rounded up
        (0.1, b"100000u"),
        (0.25, b"250000u"),
        (1.0, b"1000000u"),
        (99.999999, b"99999999u"),
        (99.9999991, b"100000m"),
        (100.0, b"100000m"),
        (99_999.999, b"99999999m"),
        (99_999.9991, b"100000S"),
        (100_000.0, b"100000S"),
        (99_999_999.0, b"99999999S"),
        (99_999_999.5, b"1666667M"),
        (1e9, b"16666667M"),  # 16666666.67 minutes, rounded up
        (99_999_999 * 60.0, b"99999999M"),
        (99_999_999 * 60.0 + 1, b"1666667H"),
        (99_999_999 * 3600.0, b"99999999H"),
        (99_999_999 * 3600.0 + 1, b"99999999H"),  # beyond the grammar: capped
        (1e300, b"99999999H"),
        (float("inf"), b"99999999H"),
    ],
)
def test_format_grpc_timeout(seconds: float, want: bytes) -> None:
    assert format_grpc_timeout(seconds) == want


_UNIT_S = {ord("n"): 1e-9, ord("u"): 1e-6, ord("m"): 1e-3, ord("S"): 1.0, ord("M"): 60.0, ord("H"): 3600.0}


@given(st.floats(min_value=1e-12, max_value=99_999_999 * 3600.0, allow_nan=False))
def test_format_then_parse_is_never_shorter_and_within_one_unit(seconds: float) -> None:
    encoded = format_grpc_timeout(seconds)
    assert 2 <= len(encoded) <= 9  # at most 8 digits and the unit
    back = parse_grpc_timeout(encoded)
    assert back is not None
    assert back >= seconds
    unit = _UNIT_S[encoded[-1]]
    assert back - seconds <= unit * (1 + 1e-9)


@given(st.integers(min_value=1, max_value=99_999_999), st.sampled_from(b"numSMH"))
def test_parse_then_format_never_shortens_a_valid_timeout(count: int, unit: int) -> None:
    seconds = parse_grpc_timeout(b"%d%c" % (count, unit))
    assert seconds is not None
    back = parse_grpc_timeout(format_grpc_timeout(seconds))
    assert back is not None
    assert back >= seconds


# --- status mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "want"),
    [
        (400, grpc.INTERNAL),
        (401, grpc.UNAUTHENTICATED),
        (403, grpc.PERMISSION_DENIED),
        (404, grpc.UNIMPLEMENTED),
        (429, grpc.UNAVAILABLE),
        (502, grpc.UNAVAILABLE),
        (503, grpc.UNAVAILABLE),
        (504, grpc.UNAVAILABLE),
        (200, grpc.UNKNOWN),
        (405, grpc.UNKNOWN),
        (408, grpc.UNKNOWN),
        (500, grpc.UNKNOWN),
        (501, grpc.UNKNOWN),
        (0, grpc.UNKNOWN),
    ],
)
def test_http_to_grpc_status(http_status: int, want: int) -> None:
    assert http_to_grpc_status(http_status) == want


@pytest.mark.parametrize(
    ("http_status", "flag", "want"),
    [
        (504, "UT", grpc.DEADLINE_EXCEEDED),  # not UNAVAILABLE: the deadline is gone, do not retry
        (403, "RBAC", grpc.PERMISSION_DENIED),
        (404, "NR", grpc.UNIMPLEMENTED),
        (503, "DC", grpc.CANCELLED),
        (503, "UO", grpc.UNAVAILABLE),
        (500, "UO", grpc.UNAVAILABLE),  # the flag wins over the status
        (503, "UH", grpc.UNAVAILABLE),  # no flag mapping: the HTTP table
        (503, "UF", grpc.UNAVAILABLE),
        (503, "URX", grpc.UNAVAILABLE),
        (503, "UC", grpc.UNAVAILABLE),
        (500, "UC", grpc.UNKNOWN),
        (503, "FI", grpc.UNAVAILABLE),
        (400, "FI", grpc.INTERNAL),  # an injected abort keeps its status's meaning
        (401, "", grpc.UNAUTHENTICATED),
        (418, "", grpc.UNKNOWN),
        (504, "ut", grpc.UNAVAILABLE),  # flags are upper-case; an unknown one falls back
        (503, "URX,UT", grpc.DEADLINE_EXCEEDED),  # comma-separated list: first with a meaning
        (504, "UT,URX", grpc.DEADLINE_EXCEEDED),
        (503, "UF,URX", grpc.UNAVAILABLE),
        (503, "DC,UT", grpc.CANCELLED),
    ],
)
def test_local_grpc_status(http_status: int, flag: str, want: int) -> None:
    assert local_grpc_status(http_status, flag) == want


# --- grpc-message -------------------------------------------------------------------------------

MESSAGES = [
    ("", b""),
    ("no healthy upstream", b"no healthy upstream"),
    ("100%", b"100%25"),  # '%' itself is always encoded
    ("%25", b"%2525"),
    ("a~b !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}", b"a~b !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}"),  # printable ASCII
    ("line1\nline2", b"line1%0Aline2"),
    ("tab\there", b"tab%09here"),
    ("\r\x00\x1f\x7f", b"%0D%00%1F%7F"),  # control characters and DEL
    ("caf\u00e9", b"caf%C3%A9"),  # upper-case hex of the UTF-8 bytes
    ("\u65e5\u672c", b"%E6%97%A5%E6%9C%AC"),
    ("\U0001f600", b"%F0%9F%98%80"),
]


@pytest.mark.parametrize(("message", "encoded"), MESSAGES)
def test_encode_grpc_message(message: str, encoded: bytes) -> None:
    assert encode_grpc_message(message) == encoded


@pytest.mark.parametrize(("message", "encoded"), MESSAGES)
def test_decode_grpc_message(message: str, encoded: bytes) -> None:
    assert decode_grpc_message(encoded) == message


def test_encode_lone_surrogate_does_not_raise() -> None:
    assert encode_grpc_message("bad \udcff name") == b"bad ? name"


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (b"caf%c3%a9", "caf\u00e9"),  # lower-case hex is accepted
        (b"%", "%"),  # malformed sequences are kept literally
        (b"%4", "%4"),
        (b"100%", "100%"),
        (b"%zz", "%zz"),
        (b"%4g", "%4g"),
        (b"%%41", "%A"),
        (b"%2", "%2"),
        (b"% 41", "% 41"),
        (b"%ff", "\ufffd"),  # decodes to bytes that are not UTF-8: replaced, not raised
        (b"%C3", "\ufffd"),
        (b"\xff", "\ufffd"),  # raw non-ASCII from a non-conforming peer
        (b"plain text", "plain text"),
        (b"%2541", "%41"),  # decoded once, not recursively
    ],
)
def test_decode_grpc_message_lenient(value: bytes, want: str) -> None:
    assert decode_grpc_message(value) == want


_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]))  # lone surrogates have no UTF-8


@given(_TEXT)
def test_message_round_trip(message: str) -> None:
    encoded = encode_grpc_message(message)
    assert all(0x20 <= b <= 0x7E for b in encoded)  # always a valid header value
    assert decode_grpc_message(encoded) == message


@given(st.binary())
def test_decode_never_raises(value: bytes) -> None:
    assert isinstance(decode_grpc_message(value), str)


# --- Trailers-Only and retries ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "extra", "want"),
    [
        (
            grpc.UNAVAILABLE,
            "no healthy upstream",
            None,
            [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"14"),
                (b"grpc-message", b"no healthy upstream"),
            ],
        ),
        (
            grpc.DEADLINE_EXCEEDED,
            "upstream request timeout: 100%",
            [(b"x-meshns-response-flags", b"UT"), (b"x-meshns-attempts", b"1")],
            [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"4"),
                (b"grpc-message", b"upstream request timeout: 100%25"),
                (b"x-meshns-response-flags", b"UT"),
                (b"x-meshns-attempts", b"1"),
            ],
        ),
        (
            grpc.OK,
            "",
            [],
            [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"0"),
                (b"grpc-message", b""),
            ],
        ),
    ],
)
def test_trailers_only_response(status: int, message: str, extra: Headers | None, want: Headers) -> None:
    assert trailers_only_response(status, message, extra) == want


def test_trailers_only_response_reads_back() -> None:
    head = trailers_only_response(grpc.PERMISSION_DENIED, "RBAC: access denied\n")
    assert is_grpc(head)
    assert grpc_status_of(head) == grpc.PERMISSION_DENIED
    assert decode_grpc_message(dict(head)[b"grpc-message"]) == "RBAC: access denied\n"


def test_trailers_only_response_does_not_alias_extra() -> None:
    extra: Headers = [(b"x-a", b"1")]
    head = trailers_only_response(grpc.INTERNAL, "x", extra)
    head.append((b"x-b", b"2"))
    assert extra == [(b"x-a", b"1")]


RETRY_TABLE = {
    "cancelled": grpc.CANCELLED,
    "deadline-exceeded": grpc.DEADLINE_EXCEEDED,
    "resource-exhausted": grpc.RESOURCE_EXHAUSTED,
    "internal": grpc.INTERNAL,
    "unavailable": grpc.UNAVAILABLE,
}
OTHER_CONDITIONS = ["5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "14", "Unavailable", ""]
STATUSES: list[int | None] = [None, *range(18)]


@pytest.mark.parametrize(
    ("condition", "status"),
    [(c, s) for c in [*RETRY_TABLE, *OTHER_CONDITIONS] for s in STATUSES],
)
def test_retry_condition_met(condition: str, status: int | None) -> None:
    want = status is not None and RETRY_TABLE.get(condition) == status
    assert retry_condition_met(condition, status) is want


def test_retry_conditions_table() -> None:
    assert RETRY_TABLE == GRPC_RETRY_CONDITIONS


@pytest.mark.parametrize(
    ("condition", "status"),
    [(c, s) for c in [*RETRY_TABLE, "unknown-condition"] for s in STATUSES],
)
def test_retry_conditions_agree_with_http1_retry_policy(condition: str, status: int | None) -> None:
    # policy/retry.py keeps its own copy of the five names (_GRPC_CODES); both paths must retry
    # the same gRPC calls.
    http1 = retryable(RetryPolicy(retry_on=(condition,)), Outcome.status(200, grpc_status=status))
    assert retry_condition_met(condition, status) is http1
