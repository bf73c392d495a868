"""The benchmark's "floor": the least a Python sidecar can do per request, run as a proxy pair.

Python, uvloop, TLS 1.3 with client certificates between the pair (on meshns's own TLS transport,
dataplane/tls_transport.py), llhttp (httptools) parsing every request and response head as it
passes, with the head handed to Python callbacks as meshns gets it, and an upstream keep-alive
pool. Nothing else: no routing, balancing, retries, policy, identity, metrics, access log or
header rewriting; bytes are forwarded as they arrive. Measured beside meshns in the same run, it
splits meshns's cost into what any Python proxy on this machine pays and what meshns's own mesh
features add, and shows which targets lie below that floor.

Placed as meshns's sidecars are, in namespaces with meshns's interception plan (render.
intercept_rules) for the uid it drops to:
  client: listens on the outbound port; each connection is dialled, with TLS, to its original
          destination (SO_ORIGINAL_DST), where the peer's interception sends it to the server.
  server: listens with TLS on the inbound port; each connection goes on, plaintext, to the app
          port on 127.0.0.1.
A benchmark tool only (small bodies, no flow control): not part of meshns.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import ssl
from collections.abc import Callable
from typing import cast

import httptools
import uvloop

from meshns.dataplane.origdst import OrigDstError, SockoptResolver
from meshns.dataplane.tls_transport import TlsStream

HANDSHAKE_S = 5.0


class _Head:
    """What an L7 proxy must at least collect from llhttp: the target, the header fields, and
    where each message ends (which is what makes an upstream connection reusable)."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = 0

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.complete += 1


Pool = dict[tuple[str, int], list["_Side"]]


class _Side(asyncio.Protocol):
    """One connection of a pair; what it reads is parsed, then written to its peer. An upstream
    side whose downstream closed between messages goes to ``pool`` for the next downstream (the
    upstream keep-alive pool every sidecar keeps: without it each new client connection would
    pay a TLS handshake)."""

    def __init__(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, head: _Head) -> None:
        self.parser, self.head = parser, head
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.held: list[bytes] = []  # read before the peer connected
        self.pooled_in: list[_Side] | None = None  # an idle upstream: the pool list it is in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.pooled_in is not None:  # an idle upstream speaking unasked: not reusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            return
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.held.append(data)

    def pair(self, peer: _Side) -> None:
        self.peer, peer.peer = peer, self
        if peer.transport is not None:
            for data in self.held:
                peer.transport.write(data)
        self.held = []

    def close(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pooled_in is not None:
            self.pooled_in.remove(self)
            self.pooled_in = None
        elif self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Down(_Side):
    """A downstream side: when it closes, its upstream goes idle into the pool if every request
    has had its whole response, else it is closed."""

    def __init__(self, parser: httptools.HttpRequestParser, head: _Head, on_made: Callable[[_Down], None],
                 pool: Pool) -> None:
        super().__init__(parser, head)
        self.on_made = on_made  # dials its upstream once it is connected
        self.pool = pool
        self.key: tuple[str, int] | None = None  # where its upstream goes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.on_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        up, self.peer = self.peer, None
        if up is None or up.transport is None or up.transport.is_closing() or self.key is None:
            return
        up.peer = None
        if up.head.complete == self.head.complete:
            idle = self.pool.setdefault(self.key, [])
            up.pooled_in = idle
            idle.append(up)
        else:
            up.transport.close()


def _context(server: bool, cert: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # as between meshns's sidecars
    ctx.load_cert_chain(cert)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # client certificates both ways: mTLS
    ctx.check_hostname = False  # the client checks the name itself, after the handshake (_named)
    return ctx


def _named(stream: TlsStream, name: str) -> bool:
    """The verified server certificate holds ``name`` (as meshns checks the peer's SPIFFE ID)."""
    return ("DNS", name) in stream.peercert.get("subjectAltName", ())


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server_side = args.role == "server"
    ctx = _context(server_side, args.cert, args.ca)

    pool: Pool = {}

    async def dial(down: _Down, host: str, port: int) -> None:
        idle = pool.setdefault((host, port), [])
        if idle:
            up = idle.pop()
            up.pooled_in = None
            up.head.complete = 0  # counted against this downstream's requests from now on
            down.pair(up)
            return
        head = _Head()
        up = _Side(httptools.HttpResponseParser(head), head)
        try:
            if server_side:
                await loop.create_connection(lambda: up, host, port)
            else:
                _, stream = await loop.create_connection(lambda: TlsStream(ctx, server_side=False), host, port)
                await stream.handshake(HANDSHAKE_S)
                if not _named(stream, args.server_name):
                    stream.abort()
                    raise ConnectionRefusedError(f"{host}:{port} is not {args.server_name}")
                stream.attach(up)
        except OSError:  # ssl.SSLError and timeouts included
            down.close()
            return
        if down.transport is None or down.transport.is_closing():
            up.close()
            return
        down.pair(up)

    tasks: set[asyncio.Task[None]] = set()

    resolver = SockoptResolver()

    def made(down: _Down) -> None:
        assert down.transport is not None
        if server_side:
            host, port = "127.0.0.1", args.app_port
        else:
            try:
                host, port = resolver.resolve(down.transport.get_extra_info("socket")).as_tuple()
            except OrigDstError:
                down.close()
                return
        down.key = (host, port)
        task = loop.create_task(dial(down, host, port))
        tasks.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(tasks.discard)

    def accepted() -> _Down:
        head = _Head()
        return _Down(httptools.HttpRequestParser(head), head, made, pool)

    async def secure(stream: TlsStream) -> None:
        try:
            await stream.handshake(HANDSHAKE_S)
        except OSError:  # ssl.SSLError and timeouts included
            return  # the stream aborted its connection
        stream.attach(accepted())

    def accepted_tls() -> TlsStream:
        stream = TlsStream(ctx, server_side=True)
        task = loop.create_task(secure(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return stream

    server = await loop.create_server(accepted_tls if server_side else accepted, "0.0.0.0", args.listen,
                                      reuse_address=True, backlog=4096)
    # Listening and the keys read: from here on the proxy's own uid, which the interception plan
    # exempts (its dials must not loop back into it), as meshns's sidecar runs as 1337.
    user = pwd.getpwnam(args.user)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    print(f"floor {args.role} ready on {args.listen} as {args.user}", flush=True)
    await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("role", choices=("client", "server"))
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--cert", required=True, help="PEM with the certificate and its key")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--user", required=True, help="the uid to drop to (exempt from interception)")
    ap.add_argument("--app-port", type=int, default=80, help="server: the app's port on 127.0.0.1")
    ap.add_argument("--server-name", default="", help="client: the name the server's certificate holds")
    uvloop.run(_serve(ap.parse_args()))


if __name__ == "__main__":
    main()
