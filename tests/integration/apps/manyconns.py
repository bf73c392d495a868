"""Many concurrent TCP connections held open, for the load test (standard library only; run
unmodified inside pods).

  manyconns.py server --port P
      A line echo server: every line a client sends comes back, and connections are held until the
      client closes them. Raises its descriptor soft limit to the hard limit first.

  manyconns.py client --target HOST:PORT -n N [--batch B] [--pause S] [--http PATH] --held-file F --go-file G
      Opens N connections in batches of B (each batch connected and echoed once before the next
      starts, S seconds apart: a ramp, never a SYN flood against a listen backlog), then writes F
      (JSON: what is held) and holds every connection until G exists. Then every connection echoes
      a second line, all are closed, and one JSON object goes to stdout:
        {"wanted", "opened", "first_ok", "second_ok", "closed_clean", "failures": {phase: {why: n}},
         "examples": [...], "seconds": {phase: s}}
      Exit status 0 whatever the outcome (the test judges the counts); 2 on bad arguments.
      With --http PATH each exchange is an HTTP/1.1 keep-alive GET of PATH instead of a line
      (a 200 with its whole Content-Length body counts as echoed), so the connections held are
      idle keep-alive connections.

The client resolves HOST once (the pod's hosts file names the service VIP) and dials the address:
10,000 name lookups would only measure the resolver. Lines are "<phase> <i>\\n", which the mesh
cannot take for an HTTP request line, so the connection is relayed as opaque TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# How long one connect or one echo may take before it counts as failed: generous, because the
# point is to count lost connections, not slow ones (a guard against hangs, never a latency bar).
OP_TIMEOUT_S = 30.0


def raise_nofile(want: int) -> int:
    """Raise the descriptor soft limit towards ``want`` (at most the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# ---------------------------------------------------------------- server


async def serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    writer.close()


async def server(port: int) -> None:
    limit = raise_nofile(1 << 20)
    # The backlog is capped by net.core.somaxconn anyway; ask for the most it allows.
    srv = await asyncio.start_server(serve_conn, "0.0.0.0", port, backlog=65535)
    print(f"manyconns server on 0.0.0.0:{port}, fd limit {limit}", file=sys.stderr, flush=True)
    async with srv:
        await srv.serve_forever()


# ---------------------------------------------------------------- client


class Conn:
    __slots__ = ("i", "reader", "writer")

    def __init__(self, i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.i = i
        self.reader = reader
        self.writer = writer


class Client:
    def __init__(self, ip: str, port: int, host: str, http_path: str | None) -> None:
        self.ip = ip
        self.port = port
        self.host = host
        self.http_path = http_path
        self.failures: dict[str, Counter[str]] = {}
        self.examples: list[str] = []

    def fail(self, phase: str, i: int, exc: BaseException | str) -> None:
        why = exc if isinstance(exc, str) else (type(exc).__name__ + (f" {exc.errno}" if isinstance(exc, OSError)
                                                                        and exc.errno else ""))
        self.failures.setdefault(phase, Counter())[why] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{phase} #{i}: {why}: {exc}")

    async def echo(self, c: Conn, phase: str) -> bool:
        if self.http_path is not None:
            return await self.get(c, phase)
        want = f"{phase} {c.i}\n".encode()
        try:
            c.writer.write(want)
            async with asyncio.timeout(OP_TIMEOUT_S):
                got = await c.reader.readline()
        except (OSError, TimeoutError) as exc:
            self.fail(phase, c.i, exc)
            return False
        if got != want:
            self.fail(phase, c.i, "eof" if not got else f"wrong echo {got[:40]!r}")
            return False
        return True

    async def get(self, c: Conn, phase: str) -> bool:
        """One keep-alive GET: a 200 and exactly its Content-Length body."""
        req = f"GET {self.http_path}?{phase}={c.i} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        try:
            c.writer.write(req)
            async with asyncio.timeout(OP_TIMEOUT_S):
                head = await c.reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await c.reader.readexactly(length)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.fail(phase, c.i, exc)
            return False
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200" or not body:
            self.fail(phase, c.i, f"status {lines[0][:40]!r}")
            return False
        return True

    async def open_one(self, i: int) -> Conn | None:
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(self.ip, self.port)
        except (OSError, TimeoutError) as exc:
            self.fail("connect", i, exc)
            return None
        c = Conn(i, reader, writer)
        if not await self.echo(c, "first"):
            writer.close()
            return None
        return c

    async def close_one(self, c: Conn) -> bool:
        """A clean close: our FIN, then the server's (the echo server closes when it reads EOF)."""
        try:
            c.writer.write_eof()
            async with asyncio.timeout(OP_TIMEOUT_S):
                rest = await c.reader.read()
        except (OSError, TimeoutError) as exc:
            self.fail("close", c.i, exc)
            c.writer.close()
            return False
        c.writer.close()
        if rest:
            self.fail("close", c.i, f"unexpected bytes {rest[:40]!r}")
            return False
        return True


async def client(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(args.n + 1024)
    host, _, port = args.target.rpartition(":")
    ip = socket.gethostbyname(host)
    cl = Client(ip, int(port), host, args.http)
    seconds: dict[str, float] = {}
    conns: list[Conn] = []
    t0 = time.monotonic()
    for start in range(0, args.n, args.batch):
        batch = await asyncio.gather(*(cl.open_one(i) for i in range(start, min(args.n, start + args.batch))))
        conns.extend(c for c in batch if c is not None)
        if args.pause:
            await asyncio.sleep(args.pause)
    seconds["open"] = round(time.monotonic() - t0, 3)
    held = {"wanted": args.n, "opened": len(conns), "seconds_to_open": seconds["open"], "pid": os.getpid()}
    Path(args.held_file + ".tmp").write_text(json.dumps(held))
    os.rename(args.held_file + ".tmp", args.held_file)  # whole, or not there at all
    go = Path(args.go_file)
    t1 = time.monotonic()
    while not go.exists():
        if time.monotonic() - t1 > args.hold_max:
            break  # the test went away; do not hold 10,000 sockets forever
        await asyncio.sleep(0.1)
    seconds["held"] = round(time.monotonic() - t1, 3)
    t2 = time.monotonic()
    second = 0
    for start in range(0, len(conns), args.batch):
        oks = await asyncio.gather(*(cl.echo(c, "second") for c in conns[start:start + args.batch]))
        second += sum(oks)
    seconds["second"] = round(time.monotonic() - t2, 3)
    t3 = time.monotonic()
    closed = 0
    for start in range(0, len(conns), args.batch):
        oks = await asyncio.gather(*(cl.close_one(c) for c in conns[start:start + args.batch]))
        closed += sum(oks)
    seconds["close"] = round(time.monotonic() - t3, 3)
    return {"wanted": args.n, "opened": len(conns), "first_ok": len(conns), "second_ok": second,
            "closed_clean": closed, "failures": {k: dict(v) for k, v in cl.failures.items()},
            "examples": cl.examples, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=7000)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("-n", type=int, default=10000)
    c.add_argument("--batch", type=int, default=250)
    c.add_argument("--pause", type=float, default=0.0, help="seconds between batches")
    c.add_argument("--http", metavar="PATH", help="HTTP/1.1 keep-alive GETs of PATH instead of lines")
    c.add_argument("--held-file", required=True)
    c.add_argument("--go-file", required=True)
    c.add_argument("--hold-max", type=float, default=600.0, help="give up waiting for the go file after this")
    args = ap.parse_args()
    if args.role == "server":
        asyncio.run(server(args.port))
    else:
        print(json.dumps(asyncio.run(client(args))), flush=True)


if __name__ == "__main__":
    main()
