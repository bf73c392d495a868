"""A raw-socket attacker: sends each bad input and prints what came back.

    badclient.py HOST PORT [--suite http|tls|slow] [--only NAME,...] [--timeout S]

One JSON line per case on stdout: {"case": name, "expect": ..., "got": ...}, where "got" is the
status of the first response line ("400"), "reset" (ECONNRESET), "closed" (the peer closed
without a response), "timeout" (nothing within --timeout) or "tls-failed" (a TLS client's
handshake was refused). Only the standard library: it runs in a pod with the system python3.

The table ``CASES`` is also the single source of the unit, component and fuzz-seed tests of the
sidecar's request parsers (tests/unit/test_http1_parsers.py, tests/component/test_bad_input.py,
scripts/fuzz): each case is a whole request that must be refused with the given status, and
none of its bytes may reach the app.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

H = b"Host: a\r\n"
P = b"POST /p HTTP/1.1\r\n" + H
C = b"Transfer-Encoding: chunked\r\n\r\n"


def _big(n: int) -> bytes:
    return b"a" * n


# (name, request bytes, status the sidecar must answer)
CASES: list[tuple[str, bytes, int]] = [
    # request smuggling shapes
    ("cl-te", P + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-cl", P + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip-cl", P + b"Transfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("te-chunked-identity", P + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501),
    ("te-identity", P + b"Transfer-Encoding: identity\r\n\r\nhello", 501),
    ("te-gzip-chunked", P + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-xchunked", P + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("te-twice", P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-gzip-then-chunked", P + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-empty", P + b"Transfer-Encoding: \r\n\r\n", 501),
    ("te-connect", b"CONNECT db:5432 HTTP/1.1\r\n" + H + C + b"0\r\n\r\n", 501),
    ("te-space-before-colon", P + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-tab-before-colon", P + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-leading-space", P + b" Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-vtab", P + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("cl-twice-differ", P + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("cl-twice-same", P + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("cl-list", P + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("cl-plus", P + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl-hex", P + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("cl-negative", P + b"Content-Length: -5\r\n\r\n", 400),
    ("cl-empty", P + b"Content-Length: \r\n\r\n", 400),
    ("cl-overflow", P + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("cl-space-inside", P + b"Content-Length: 5 5\r\n\r\nhello", 400),
    # line ends, NUL and control bytes
    ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("bare-lf-end", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("bare-cr-value", b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400),
    ("bare-cr-line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    ("nul-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("nul-target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("nul-name", b"GET / HTTP/1.1\r\n" + H + b"X\x00A: 1\r\n\r\n", 400),
    ("ctl-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    ("del-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n continued\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n\tcontinued\r\n\r\n", 400),
    ("obs-fold-first", b"GET / HTTP/1.1\r\n X-A: 1\r\n" + H + b"\r\n", 400),
    # header names
    ("name-with-space", b"GET / HTTP/1.1\r\n" + H + b"Foo Bar: x\r\n\r\n", 400),
    ("name-empty", b"GET / HTTP/1.1\r\n" + H + b": x\r\n\r\n", 400),
    ("name-no-colon", b"GET / HTTP/1.1\r\n" + H + b"Foo\r\n\r\n", 400),
    ("name-bad-char", b"GET / HTTP/1.1\r\n" + H + b"X(A): 1\r\n\r\n", 400),
    # chunk sizes
    ("chunk-zz", P + C + b"zz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-negative", P + C + b"-1\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-ext-empty", P + C + b"1;\r\na\r\n0\r\n\r\n", 400),
    ("chunk-ext-garbage", P + C + b"1;\x01\r\na\r\n0\r\n\r\n", 400),
    ("chunk-ext-space", P + C + b"1; a=b\r\na\r\n0\r\n\r\n", 400),
    ("chunk-overflow", P + C + b"10000000000000000\r\na\r\n0\r\n\r\n", 400),
    ("chunk-overflow-long", P + C + b"ffffffffffffffffffff\r\na\r\n0\r\n\r\n", 400),
    ("chunk-hex-prefix", P + C + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-trailing-space", P + C + b"5 \r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-leading-space", P + C + b" 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-no-crlf-after-data", P + C + b"5\r\nhelloXX0\r\n\r\n", 400),
    ("chunk-bare-lf", P + C + b"5\nhello\r\n0\r\n\r\n", 400),
    ("chunk-bad-trailer", P + C + b"1\r\na\r\n0\r\nX : y\r\n\r\n", 400),
    ("chunk-te-trailer", P + C + b"1\r\na\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("chunk-cl-trailer", P + C + b"1\r\na\r\n0\r\nContent-Length: 5\r\n\r\n", 400),
    # request lines
    ("version-2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 400),
    ("version-3", b"GET / HTTP/3\r\n" + H + b"\r\n", 400),
    ("version-1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    ("version-0.9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 400),
    ("version-lowercase", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("method-lowercase", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method-unknown", b"FOO / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-space", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-no-slash", b"GET abc HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-asterisk-get", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("trailing-space-line", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # sizes
    ("line-20k", b"GET /" + _big(20_000) + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("line-70k", b"GET /" + _big(70_000) + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("header-70k", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + _big(70_000) + b"\r\n\r\n", 431),
    ("headers-many-small", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: %s\r\n" % (i, _big(900)) for i in range(80))
     + b"\r\n", 431),
    ("headers-101", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n", 431),
]

# What a request at the limits must still get through (the same tables check it is served).
# Each closes its connection, so a client reading to the end gets one response.
CLOSE = b"Connection: close\r\n"
GOOD_LIMITS: list[tuple[str, bytes]] = [
    ("line-16k", b"GET /" + _big(16 * 1024 - 15) + b" HTTP/1.1\r\n" + H + CLOSE + b"\r\n"),
    ("headers-100", b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(98)) + H + CLOSE + b"\r\n"),
    ("head-64k", b"GET / HTTP/1.1\r\n" + H + CLOSE + b"X-Big: " + _big(64 * 1024 - 60) + b"\r\n\r\n"),
    ("two-spaces", b"GET  /good  HTTP/1.1\r\n" + H + CLOSE + b"\r\n"),
]

# For a listener with max_request_body_bytes of 1 KiB (the integration test's PERMISSIVE pod).
BODY_CASES: list[tuple[str, bytes, int]] = [
    ("body-declared-1m", P + b"Content-Length: 1048576\r\n\r\n" + _big(2000), 413),
    ("body-chunked-growing", P + C + b"".join(b"200\r\n" + _big(512) + b"\r\n" for _ in range(4)) + b"0\r\n\r\n", 413),
]

# A TLS record header announcing a ClientHello, then not one.
TLS_GARBAGE = b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 2
# The first bytes of a real ClientHello: a record header and a handshake header promising more.
TLS_TRUNCATED = bytes.fromhex("16030100f8010000f40303") + b"\x00" * 20


def read_answer(sock: socket.socket, timeout: float) -> str:
    """The status of the first response ("400" when the sidecar refused: its answer carries the
    response flag DPE; "400-app" when something else answered), or what happened instead."""
    sock.settimeout(timeout)
    got = b""
    try:
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        if not got:
            return "reset"
    except TimeoutError:
        if not got:
            return "timeout"
    except OSError as exc:
        return f"error {exc.__class__.__name__}"
    if got[:1] == b"\x15":
        return _after_alert(sock)
    if got.startswith(b"HTTP/1.1 "):
        status = got[9:12].decode("ascii", "replace")
        head = got.split(b"\r\n\r\n", 1)[0].lower()
        return status if b"\r\nx-meshns-response-flags: dpe" in head or status == "200" else status + "-app"
    return "closed" if not got else "garbage " + got[:20].hex()


def _after_alert(sock: socket.socket) -> str:
    """A TLS alert (record type 0x15: the TLS stack saying why) is no answer; how did it end?"""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    return "closed"


def send(host: str, port: int, data: bytes, timeout: float, half_close: bool = False) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except ConnectionResetError:
            return "reset"
        except BrokenPipeError:
            return "closed"
        return read_answer(sock, timeout)


def slowloris(host: str, port: int, timeout: float) -> str:
    """A request head one byte at a time, never finished."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        head = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 1000
        deadline = time.monotonic() + timeout
        sock.settimeout(0.2)
        for b in head:
            if time.monotonic() > deadline:
                return "timeout"
            try:
                sock.sendall(bytes([b]))
                got = sock.recv(4096)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return "reset"
            if not got:
                return "closed"
            return got[9:12].decode("ascii", "replace") if got.startswith(b"HTTP/1.1 ") else "garbage"
        return "timeout"


def tls_client(host: str, port: int, timeout: float) -> str:
    """A real TLS client without a certificate (and trusting anything): the sidecar requires a
    mesh certificate, so the handshake must fail."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                # TLS 1.3: a client learns of its refused certificate when it next reads.
                tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                got = tls.recv(4096)
                return "tls-failed" if not got else "served " + got[:12].decode("ascii", "replace")
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return "tls-failed"
        except TimeoutError:
            return "timeout"


def tls_truncated_silent(host: str, port: int, timeout: float) -> str:
    """Half a ClientHello, then silence: the handshake timeout ends it."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(TLS_TRUNCATED)
        return read_answer(sock, timeout)


def suite(name: str, host: str, port: int, timeout: float) -> list[tuple[str, str, object]]:
    """(case, expected, callable returning what happened)."""
    if name == "http":
        return [(n, str(status), lambda d=data: send(host, port, d, timeout)) for n, data, status in CASES]
    if name == "body":
        return [(n, str(status), lambda d=data: send(host, port, d, timeout)) for n, data, status in BODY_CASES]
    if name == "good":
        return [(n, "200", lambda d=data: send(host, port, d, timeout)) for n, data in GOOD_LIMITS]
    if name == "slow":
        return [("slowloris", "408", lambda: slowloris(host, port, timeout))]
    if name == "tls":
        return [
            ("tls-garbage", "reset|closed", lambda: send(host, port, TLS_GARBAGE, timeout)),
            ("tls-truncated-close", "reset|closed", lambda: send(host, port, TLS_TRUNCATED, timeout, True)),
            ("tls-truncated-silent", "reset|closed", lambda: tls_truncated_silent(host, port, timeout)),
            ("tls-no-cert", "tls-failed", lambda: tls_client(host, port, timeout)),
        ]
    raise SystemExit(f"unknown suite {name!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--suite", default="http", choices=["http", "body", "good", "slow", "tls"])
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    cases = suite(args.suite, args.host, args.port, args.timeout)
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if c[0] in wanted]

    def run(case: tuple[str, str, object]) -> dict[str, str]:
        name, expect, fn = case
        try:
            got = fn()  # type: ignore[operator]
        except OSError as exc:
            got = f"error {exc.__class__.__name__}: {exc}"
        return {"case": name, "expect": expect, "got": str(got)}

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        for result in pool.map(run, cases):
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
