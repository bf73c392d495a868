"""A gRPC server and client for integration tests, run unmodified inside pods (no protoc: a generic
service with JSON messages).

  grpc_app.py server --port P --name NAME [--fail-first N] [--fail-code CODE] [--sleep S]
  grpc_app.py client --target HOST:PORT SCENARIO [-n N] [--deadline S] [--sleep S] ...

Service meshns.test.Echo (every reply carries the server's name in "server"):
  Unary         {"msg"}            -> {"server", "echo"}, trailing metadata x-server: NAME
  ServerStream  {"n", "size"?}      -> n x {"server", "i", "pad": size bytes}
  ClientStream  stream {"value"}   -> {"server", "count", "sum", "bytes": of the requests' "pad"}
  Bidi          stream {"i", "pad"?} -> one {"server", "i", "pad"} per message, as each arrives
  Slow          {"sleep"?}         -> sleeps (the request's "sleep", else --sleep) then {"server", "slept"}
  Flaky         {}                 -> fails the first --fail-first calls with --fail-code, then {"server", "call"}
  Stats         {}                 -> {"server", "calls": {method: count}}
  Die           {}                 -> answers, then the process exits (the app is gone)

Client scenarios (one channel for the whole scenario; one JSON object on stdout; exit 0 unless
the arguments are wrong, whatever the calls' outcome):
  unary, flaky   -n calls in a row       -> {"calls", "ok", "failed", "servers", "codes", "errors",
                                             and for unary "trailers_ok", "echo_ok": replies with the trailer / the echo}
  loop           unary calls until --duration or --stop-file, --ready-file made after the first OK
  server-stream  one call, -n replies    -> {"code", "details", "count", "servers", "in_order", "bytes"}
  client-stream  one call, -n messages   -> {"code", "details", "server", "count", "sum", "bytes"}
  bidi           one call, -n ping-pongs -> {"code", "details", "count", "servers", "in_order", "bytes"}
  slow           one call with --deadline (and --sleep for the server) -> {"code", "details", "server"?}
  stats, die     one call                -> {"code", "details", ...the reply}
--size B pads each message (unary, client-stream and bidi requests, server-stream replies) with B bytes.
Status codes are reported by name (OK, UNAVAILABLE, DEADLINE_EXCEEDED...), details as grpcio gives them.
The client never retries by itself (grpc.enable_retries 0) and never uses a proxy.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# getaddrinfo, so the pod's hosts file is what resolves service names (set before grpc loads).
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")

import grpc  # type: ignore[import-untyped]

SERVICE = "meshns.test.Echo"
Msg = dict[str, Any]


def encode(obj: Msg) -> bytes:
    return json.dumps(obj).encode()


def decode(data: bytes) -> Msg:
    obj = json.loads(data) if data else {}
    assert isinstance(obj, dict)
    return obj


# ---------------------------------------------------------------- server


class Echo:
    def __init__(self, name: str, fail_first: int, fail_code: grpc.StatusCode, sleep: float) -> None:
        self.name = name
        self.fail_first = fail_first
        self.fail_code = fail_code
        self.sleep = sleep
        self.calls: Counter[str] = Counter()
        self.flaky_seen = 0
        self.lock = threading.Lock()

    def count(self, method: str) -> int:
        with self.lock:
            self.calls[method] += 1
            return self.calls[method]

    def unary(self, req: Msg, ctx: grpc.ServicerContext) -> Msg:
        self.count("Unary")
        ctx.set_trailing_metadata((("x-server", self.name),))
        return {"server": self.name, "echo": req.get("msg")}

    def server_stream(self, req: Msg, ctx: grpc.ServicerContext) -> Iterator[Msg]:
        self.count("ServerStream")
        pad = "x" * int(req.get("size", 0))
        for i in range(int(req.get("n", 1))):
            yield {"server": self.name, "i": i, "pad": pad}

    def client_stream(self, reqs: Iterator[Msg], ctx: grpc.ServicerContext) -> Msg:
        self.count("ClientStream")
        n, total, size = 0, 0, 0
        for req in reqs:
            n += 1
            total += int(req.get("value", 0))
            size += len(req.get("pad", ""))
        return {"server": self.name, "count": n, "sum": total, "bytes": size}

    def bidi(self, reqs: Iterator[Msg], ctx: grpc.ServicerContext) -> Iterator[Msg]:
        self.count("Bidi")
        for req in reqs:
            yield {"server": self.name, "i": req.get("i"), "pad": req.get("pad", "")}

    def slow(self, req: Msg, ctx: grpc.ServicerContext) -> Msg:
        self.count("Slow")
        seconds = float(req.get("sleep", self.sleep))
        end = time.monotonic() + seconds
        while ctx.is_active() and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return {"server": self.name, "slept": seconds}

    def flaky(self, req: Msg, ctx: grpc.ServicerContext) -> Msg:
        k = self.count("Flaky")
        if k <= self.fail_first:
            ctx.abort(self.fail_code, f"{self.name} fails call {k} on purpose")
        return {"server": self.name, "call": k}

    def stats(self, req: Msg, ctx: grpc.ServicerContext) -> Msg:
        with self.lock:
            return {"server": self.name, "calls": dict(self.calls)}

    def die(self, req: Msg, ctx: grpc.ServicerContext) -> Msg:
        threading.Timer(0.2, os._exit, (1,)).start()
        return {"server": self.name, "dying": True}


def serve(args: argparse.Namespace) -> None:
    echo = Echo(args.name, args.fail_first, grpc.StatusCode[args.fail_code], args.sleep)
    u = {"request_deserializer": decode, "response_serializer": encode}
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary, **u),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream, **u),
        "ClientStream": grpc.stream_unary_rpc_method_handler(echo.client_stream, **u),
        "Bidi": grpc.stream_stream_rpc_method_handler(echo.bidi, **u),
        "Slow": grpc.unary_unary_rpc_method_handler(echo.slow, **u),
        "Flaky": grpc.unary_unary_rpc_method_handler(echo.flaky, **u),
        "Stats": grpc.unary_unary_rpc_method_handler(echo.stats, **u),
        "Die": grpc.unary_unary_rpc_method_handler(echo.die, **u),
    }
    # so_reuseport off: a second server on a taken port fails instead of sharing it silently.
    server = grpc.server(ThreadPoolExecutor(max_workers=args.workers), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    try:
        port = server.add_insecure_port(f"0.0.0.0:{args.port}")  # --port 0: any free port
    except RuntimeError:
        port = 0
    if port == 0:
        sys.exit(f"grpc_app: cannot listen on port {args.port}")
    server.start()
    print(f"grpc_app {args.name}: serving {SERVICE} on 0.0.0.0:{port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


# ---------------------------------------------------------------- client


def failure(exc: grpc.RpcError) -> Msg:
    return {"code": exc.code().name, "details": exc.details() or ""}


class Client:
    def __init__(self, target: str, deadline: float, size: int = 0) -> None:
        self.pad = "x" * size
        self.channel = grpc.insecure_channel(target, options=[("grpc.enable_retries", 0),
                                                              ("grpc.enable_http_proxy", 0)])
        self.deadline = deadline

    def method(self, kind: str, name: str) -> Any:
        """A multi-callable (grpc.UnaryUnaryMultiCallable...) for one method of the service."""
        make = getattr(self.channel, kind)
        return make(f"/{SERVICE}/{name}", request_serializer=encode, response_deserializer=decode)

    def calls(self, name: str, n: int, until: Callable[[], bool] | None = None,
              ready_file: str | None = None) -> Msg:
        call = self.method("unary_unary", name)
        ok, servers, codes, trailers_ok, echo_ok = 0, Counter[str](), Counter[str](), 0, 0
        errors: list[Msg] = []
        i = 0
        while (until is None and i < n) or (until is not None and not until()):
            i += 1
            try:
                msg = f"m{i}{self.pad}"
                reply, rpc = call.with_call({"msg": msg}, timeout=self.deadline)
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
                if len(errors) < 5:
                    errors.append(failure(exc))
                continue
            ok += 1
            codes["OK"] += 1
            servers[reply.get("server", "?")] += 1
            if name == "Unary" and ("x-server", reply.get("server")) in tuple(rpc.trailing_metadata() or ()):
                trailers_ok += 1
            if reply.get("echo") == msg:
                echo_ok += 1
            if ready_file and ok == 1:
                Path(ready_file).touch()
        out: Msg = {"calls": i, "ok": ok, "failed": i - ok, "servers": dict(servers), "codes": dict(codes),
                    "errors": errors}
        if name == "Unary":
            out.update(trailers_ok=trailers_ok, echo_ok=echo_ok)
        return out

    def server_stream(self, n: int) -> Msg:
        got: list[Msg] = []
        out: Msg = {"code": "OK", "details": ""}
        try:
            got.extend(self.method("unary_stream", "ServerStream")({"n": n, "size": len(self.pad)},
                                                                     timeout=self.deadline))
        except grpc.RpcError as exc:
            out = failure(exc)
        out.update(count=len(got), servers=dict(Counter(m.get("server", "?") for m in got)),
                   in_order=[m.get("i") for m in got] == list(range(len(got))),
                   bytes=sum(len(m.get("pad", "")) for m in got))
        return out

    def client_stream(self, n: int) -> Msg:
        try:
            reply = self.method("stream_unary", "ClientStream")(iter([{"value": i, "pad": self.pad} for i in range(1, n + 1)]),
                                                                 timeout=self.deadline)
        except grpc.RpcError as exc:
            return failure(exc)
        return {"code": "OK", "details": "", **reply}

    def bidi(self, n: int) -> Msg:
        """Ping-pong: message i+1 is sent only once reply i came back, so a proxy that buffered a
        stream instead of relaying each message would never finish (the deadline would)."""
        outbox: queue.Queue[Msg | None] = queue.Queue()

        def requests() -> Iterator[Msg]:
            while (m := outbox.get()) is not None:
                yield m

        got: list[Msg] = []
        out: Msg = {"code": "OK", "details": ""}
        outbox.put({"i": 0, "pad": self.pad})
        try:
            for reply in self.method("stream_stream", "Bidi")(requests(), timeout=self.deadline):
                got.append(reply)
                outbox.put({"i": len(got), "pad": self.pad} if len(got) < n else None)
        except grpc.RpcError as exc:
            out = failure(exc)
        finally:
            outbox.put(None)
        out.update(count=len(got), servers=dict(Counter(m.get("server", "?") for m in got)),
                   in_order=[m.get("i") for m in got] == list(range(len(got))),
                   bytes=sum(len(m.get("pad", "")) for m in got))
        return out

    def one(self, name: str, req: Msg) -> Msg:
        try:
            reply = self.method("unary_unary", name)(req, timeout=self.deadline)
        except grpc.RpcError as exc:
            return failure(exc)
        return {"code": "OK", "details": "", **reply}


def client(args: argparse.Namespace) -> Msg:
    c = Client(args.target, args.deadline, args.size)
    try:
        match args.scenario:
            case "unary":
                return c.calls("Unary", args.n)
            case "flaky":
                return c.calls("Flaky", args.n)
            case "loop":
                end = time.monotonic() + args.duration
                stop = Path(args.stop_file) if args.stop_file else None

                def until() -> bool:
                    return time.monotonic() > end or (stop is not None and stop.exists())

                return c.calls("Unary", 0, until=until, ready_file=args.ready_file)
            case "server-stream":
                return c.server_stream(args.n)
            case "client-stream":
                return c.client_stream(args.n)
            case "bidi":
                return c.bidi(args.n)
            case "slow":
                return c.one("Slow", {} if args.sleep is None else {"sleep": args.sleep})
            case "stats":
                return c.one("Stats", {})
            case "die":
                return c.one("Die", {})
        raise AssertionError(args.scenario)
    finally:
        c.channel.close()


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--name", required=True)
    s.add_argument("--fail-first", type=int, default=0, help="Flaky fails this many calls first")
    s.add_argument("--fail-code", default="UNAVAILABLE", choices=[c.name for c in grpc.StatusCode if c.name != "OK"])
    s.add_argument("--sleep", type=float, default=1.0, help="Slow's delay when the request names none")
    s.add_argument("--workers", type=int, default=64)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("scenario", choices=["unary", "flaky", "loop", "server-stream", "client-stream", "bidi", "slow",
                                        "stats", "die"])
    c.add_argument("-n", type=int, default=10, help="calls, stream replies or stream messages")
    c.add_argument("--size", type=int, default=0, help="pad each message with this many bytes")
    c.add_argument("--deadline", type=float, default=20.0, help="per call, seconds")
    c.add_argument("--sleep", type=float, default=None, help="slow: the server's delay for this call")
    c.add_argument("--duration", type=float, default=10.0, help="loop: at most this long")
    c.add_argument("--stop-file", help="loop: stop once this file exists")
    c.add_argument("--ready-file", help="loop: made after the first OK call")
    args = ap.parse_args(None if argv is None else list(argv))
    if args.role == "server":
        serve(args)
    else:
        print(json.dumps(client(args)), flush=True)


if __name__ == "__main__":
    main()
