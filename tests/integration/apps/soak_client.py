"""The soak test's client: paced loops of HTTP/1.1, gRPC and TCP traffic through the mesh, every
failure recorded with its wall-clock time so the test can hold it against the restart windows.
Run unmodified inside a pod; stops when the stop file exists.

  soak_client.py --stop-file F [--http URL] [--grpc HOST:PORT] [--tcp HOST:PORT] [--scale X]

Loops (one thread each; rates are per loop at --scale 1):
  http-keepalive  x2  GET URL on one kept-alive connection, ~15/s each
  http-newconn        GET URL on a new connection each time (Connection: close), ~8/s
  grpc-unary          unary calls on one channel, ~25/s
  grpc-stream         a server stream of 5 replies every 0.5 s
  tcp-newconn         connect, one line echoed, close, ~8/s
  tcp-longlived  x3  one connection each, a line echoed every second; reconnects after a failure

A request counts as OK when it got the whole expected answer: HTTP 200 with a body, gRPC OK with
the right replies, TCP the same line back. Anything else is a failure: {"t": unix time, "loop",
"what"}. At the end one JSON object goes to stdout: {"ok": {loop: n}, "failed": {loop: n},
"failures": [...], "seconds"}. Exit status 0 whatever the outcome.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")

TIMEOUT_S = 15.0
MAX_FAILURES = 20_000


class Recorder:
    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failures: list[dict[str, Any]] = []

    def stopped(self) -> bool:
        return self.stop_file.exists()

    def success(self, loop: str) -> None:
        with self.lock:
            self.ok[loop] += 1

    def failure(self, loop: str, what: str, t: float | None = None) -> None:
        with self.lock:
            self.failed[loop] += 1
            if len(self.failures) < MAX_FAILURES:
                self.failures.append({"t": round(t if t is not None else time.time(), 3), "loop": loop,
                                      "what": what[:300]})

    def pace(self, started: float, period: float) -> None:
        left = period - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- HTTP/1.1


def http_loop(rec: Recorder, loop: str, url: str, period: float, keepalive: bool) -> None:
    u = urlsplit(url)
    path = u.path or "/"
    conn: http.client.HTTPConnection | None = None
    while not rec.stopped():
        started = time.monotonic()
        t0 = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=TIMEOUT_S)
            conn.request("GET", path, headers={} if keepalive else {"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or not body:
                rec.failure(loop, f"status {resp.status} flags {resp.getheader('x-meshns-response-flags')} "
                                  f"body {body[:80]!r}", t0)
            else:
                rec.success(loop)
            if not keepalive or resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            rec.failure(loop, describe(exc), t0)
            if conn is not None:
                conn.close()
            conn = None
        rec.pace(started, period)
    if conn is not None:
        conn.close()


# ---------------------------------------------------------------- gRPC


def grpc_loop(rec: Recorder, target: str, period: float, stream_every: float) -> None:
    import grpc  # type: ignore[import-untyped]
    from grpc_app import SERVICE, decode, encode

    channel = grpc.insecure_channel(target, options=[("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0)])
    unary = channel.unary_unary(f"/{SERVICE}/Unary", request_serializer=encode, response_deserializer=decode)
    stream = channel.unary_stream(f"/{SERVICE}/ServerStream", request_serializer=encode,
                                  response_deserializer=decode)
    next_stream = time.monotonic()
    i = 0
    while not rec.stopped():
        started = time.monotonic()
        i += 1
        t0 = time.time()
        try:
            reply = unary({"msg": f"m{i}"}, timeout=TIMEOUT_S)
            if reply.get("echo") != f"m{i}":
                rec.failure("grpc-unary", f"wrong reply {reply!r:.80}", t0)
            else:
                rec.success("grpc-unary")
        except grpc.RpcError as exc:
            rec.failure("grpc-unary", f"{exc.code().name}: {exc.details()}", t0)
        if time.monotonic() >= next_stream:
            next_stream = time.monotonic() + stream_every
            t0 = time.time()
            try:
                got = [m.get("i") for m in stream({"n": 5}, timeout=TIMEOUT_S)]
                if got != list(range(5)):
                    rec.failure("grpc-stream", f"replies {got}", t0)
                else:
                    rec.success("grpc-stream")
            except grpc.RpcError as exc:
                rec.failure("grpc-stream", f"{exc.code().name}: {exc.details()}", t0)
        rec.pace(started, period)
    channel.close()


# ---------------------------------------------------------------- TCP


def tcp_echo(sock: socket.socket, line: bytes) -> None:
    sock.sendall(line)
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {got!r}")
        got += chunk
    if got != line:
        raise ValueError(f"echo {got[:60]!r} for {line[:60]!r}")


def tcp_newconn_loop(rec: Recorder, host: str, port: int, period: float) -> None:
    i = 0
    while not rec.stopped():
        started = time.monotonic()
        i += 1
        t0 = time.time()
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT_S) as s:
                tcp_echo(s, f"new {i}\n".encode())
                s.shutdown(socket.SHUT_WR)
                if s.recv(1) != b"":
                    raise ValueError("bytes after the echo")
            rec.success("tcp-newconn")
        except (OSError, ValueError) as exc:
            rec.failure("tcp-newconn", describe(exc), t0)
        rec.pace(started, period)


def tcp_longlived_loop(rec: Recorder, host: str, port: int, period: float, k: int) -> None:
    sock: socket.socket | None = None
    i = 0
    while not rec.stopped():
        started = time.monotonic()
        i += 1
        t0 = time.time()
        try:
            if sock is None:
                sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
            tcp_echo(sock, f"long {k} {i}\n".encode())
            rec.success("tcp-longlived")
        except (OSError, ValueError) as exc:
            rec.failure("tcp-longlived", describe(exc), t0)
            if sock is not None:
                sock.close()
            sock = None
        rec.pace(started, period)
    if sock is not None:
        sock.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--http")
    ap.add_argument("--grpc")
    ap.add_argument("--tcp")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every loop's rate")
    args = ap.parse_args()
    rec = Recorder(Path(args.stop_file))
    s = args.scale
    threads: list[threading.Thread] = []

    def start(fn: Any, *fargs: Any) -> None:
        threads.append(threading.Thread(target=fn, args=(rec, *fargs), daemon=True))

    if args.http:
        start(http_loop, "http-keepalive", args.http, 1 / (15 * s), True)
        start(http_loop, "http-keepalive", args.http, 1 / (15 * s), True)
        start(http_loop, "http-newconn", args.http, 1 / (8 * s), False)
    if args.grpc:
        start(grpc_loop, args.grpc, 1 / (25 * s), 0.5 / s)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        start(tcp_newconn_loop, host, int(port), 1 / (8 * s))
        for k in range(3):
            start(tcp_longlived_loop, host, int(port), 1.0 / s, k)
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"ok": rec.ok, "failed": rec.failed, "failures": rec.failures,
                      "seconds": round(time.monotonic() - began, 3)}), flush=True)


if __name__ == "__main__":
    main()
