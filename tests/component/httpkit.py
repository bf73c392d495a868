"""Helpers for the HTTP component tests: h11-based test backends on 127.0.0.2-4 (one port), an
h11 keep-alive client, and a sidecar whose original destination is a service VIP; and for the
TLS ones, a workload identity from a test CA and a wait for a condition."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11
import uvloop

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.connect import Connector
from meshns.dataplane.origdst import FixedResolver
from meshns.dataplane.server import Sidecar
from meshns.mtls.ca import CertAuthority, key_pem, new_key
from meshns.mtls.identity import SpiffeId
from meshns.mtls.tls import WorkloadTls
from meshns.snapshot import Endpoint, HttpRoute, Service, ServicePort, Snapshot

LO = "127.0.0.1"
VIP = "127.0.0.100"
VPORT = 9080
IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
BLOCK = bytes(range(256)) * 4096  # 1 MiB


def uvloop_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh uvloop loop (no pytest-asyncio here), with a hard timeout;
    pytest's fixtures (tmp_path...) are passed through (functools.wraps keeps the signature)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(120):
                await fn(*args, **kwargs)

        uvloop.run(bounded())

    return wrapper


@dataclass
class Backend:
    """One endpoint. ``mode``: ok | fail (503 while fail_left > 0, then ok) | hang | close |
    midclose (head and half the body, then close)."""

    ip: str
    mode: str = "ok"
    fail_left: int = 0
    requests: int = 0
    connections: int = 0
    unused_open: int = 0  # connections open right now that have not carried a request yet
    body_size: int = 0  # extra bytes appended to each answer
    seen: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.unused_open += 1
        used = False
        conn = h11.Connection(h11.SERVER)
        with contextlib.suppress(ConnectionError, h11.RemoteProtocolError, asyncio.CancelledError):
            while True:
                req, digest, size = await self._read_request(conn, reader, writer)
                if req is None:
                    break
                if not used:
                    used = True
                    self.unused_open -= 1
                self.requests += 1
                self.seen.append((req.method, req.target, list(req.headers.raw_items())))
                if not await self._answer(conn, writer, req, digest, size):
                    break
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        if not used:
            self.unused_open -= 1
        writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> tuple[h11.Request | None, str, int]:
        req = None
        digest = hashlib.sha256()
        size = 0
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and req is None:
                    return None, "", 0
                continue
            if isinstance(ev, h11.Request):
                req = ev
                if any(n == b"expect" for n, _ in ev.headers) and self.mode != "reject100":
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            elif isinstance(ev, h11.Data):
                digest.update(ev.data)
                size += len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return req, digest.hexdigest(), size
            else:
                return None, "", 0

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter, req: h11.Request,
                      digest: str, size: int) -> bool:
        mode = self.mode
        if mode == "fail" and self.fail_left > 0:
            self.fail_left -= 1
            body = b"failing\n"
            writer.write(conn.send(h11.Response(status_code=503, headers=[
                ("content-length", str(len(body))), ("x-backend", self.ip)])) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            return True
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "close":
            return False
        if req.target.startswith(b"/bulk/"):
            total = int(req.target.split(b"/")[2])
            headers0 = [("X-Backend", self.ip)]
            writer.write(conn.send(h11.Response(status_code=200, headers=headers0)) or b"")
            sent = 0
            while sent < total:
                piece = BLOCK[: min(len(BLOCK), total - sent)]
                writer.write(conn.send(h11.Data(data=piece)) or b"")
                sent += len(piece)
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            return True
        body = f"{self.ip} {req.method.decode()} {req.target.decode()} {size} {digest}\n".encode()
        body += b"x" * self.body_size
        headers = [("Content-Length", str(len(body))), ("X-Backend", self.ip), ("X-Mixed-Case", "Yes")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        if mode == "midclose":
            writer.write(body[: len(body) // 2])
            await writer.drain()
            return False
        if req.method != b"HEAD":
            writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return True


@contextlib.asynccontextmanager
async def on_one_port(starts: Sequence[Callable[[int], Awaitable[asyncio.Server]]]) -> AsyncIterator[int]:
    """Servers made by ``starts`` (each called with the port: 0 for the first, which picks one),
    all on one port on their own addresses; yields the port. Retried when it is taken elsewhere."""
    for _ in range(20):
        servers: list[asyncio.Server] = []
        try:
            port = 0
            for start in starts:
                srv = await start(port)
                servers.append(srv)
                port = srv.sockets[0].getsockname()[1]
        except OSError:
            for s in servers:
                s.close()
            continue
        try:
            yield port
        finally:
            for s in servers:
                s.close()
        return
    raise RuntimeError("no common free port")


@contextlib.asynccontextmanager
async def backends(n: int = 3, handler: Callable[[Backend], Callable[..., Awaitable[None]]] | None = None,
                   ) -> AsyncIterator[tuple[int, list[Backend]]]:
    """n backends on IPS[:n], all on one port; yields (port, backends)."""
    bes = [Backend(ip) for ip in IPS[:n]]
    starts = [functools.partial(asyncio.start_server, handler(be) if handler is not None else be.handle, be.ip)
              for be in bes]
    async with on_one_port(starts) as port:
        yield port, bes


def service(port: int, n: int = 3, **over: Any) -> Service:
    base: dict[str, Any] = {
        "name": "reviews", "vip": VIP, "ports": (ServicePort(VPORT, port),),
        "endpoints": tuple(Endpoint(f"pod{i}", ip, (("version", f"v{i + 1}"),)) for i, ip in enumerate(IPS[:n])),
        "lb": "round_robin", "routes": (HttpRoute(),),
    }
    base.update(over)
    return Service(**base)


@contextlib.asynccontextmanager
async def sidecar(svc: Service | None, parser: str = "auto", seed: int = 7, connector: Connector | None = None,
                  **over: Any) -> AsyncIterator[Sidecar]:
    cfg: dict[str, Any] = {"pod": "client", "pod_ip": LO, "outbound_port": 0, "inbound_port": 0,
                           "admin_port": 0, "probe_port": 15002, "http_parser": parser}
    cfg.update(over)
    side = Sidecar(SidecarConfig(**cfg), resolver=FixedResolver(OrigDst(VIP, VPORT)),
                   rng=random.Random(seed), connector=connector)
    if svc is not None:
        side.store.set(Snapshot(version=1, pod="client", services=(svc,)))
    await side.start()
    try:
        yield side
    finally:
        await side.drain()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[bytes, bytes]]


class Client:
    """An h11 keep-alive client over one connection to the sidecar's outbound listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, side: Sidecar) -> Client:
        assert side.outbound_addr is not None
        r, w = await asyncio.open_connection(LO, side.outbound_addr.port)
        return cls(r, w)

    async def request(self, method: str = "GET", path: str = "/", headers: list[tuple[str, str]] | None = None,
                      body: bytes | None = None) -> Reply:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        hs = [("Host", "reviews")] + (headers or [])
        if body is not None:
            hs.append(("Content-Length", str(len(body))))
        self.writer.write(self.conn.send(h11.Request(method=method, target=path, headers=hs)) or b"")
        if body:
            self.writer.write(self.conn.send(h11.Data(data=body)) or b"")
        self.writer.write(self.conn.send(h11.EndOfMessage()) or b"")
        return await self.read_response()

    async def read_response(self) -> Reply:
        resp = None
        chunks = []
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
                continue
            if isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                assert resp is not None
                raw = list(resp.headers.raw_items())
                return Reply(resp.status_code, {n.decode().lower(): v.decode() for n, v in raw},
                             b"".join(chunks), raw)
            elif isinstance(ev, h11.ConnectionClosed):
                raise ConnectionError("closed")

    def close(self) -> None:
        self.writer.close()


async def raw_exchange(side: Sidecar, data: bytes, *, half_close: bool = False) -> bytes:
    assert side.outbound_addr is not None
    r, w = await asyncio.open_connection(LO, side.outbound_addr.port)
    w.write(data)
    if half_close:
        w.write_eof()
    out = []
    with contextlib.suppress(ConnectionError):
        while chunk := await r.read(65536):
            out.append(chunk)
    w.close()
    return b"".join(out)


def free_port() -> int:
    s = socket.socket()
    s.bind((LO, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def workload(ca: CertAuthority, name: str) -> WorkloadTls:
    """A fresh key and certificate for ns default / sa ``name`` in ``ca``'s trust domain."""
    key = new_key()
    spiffe = SpiffeId(ca.trust_domain, "default", name)
    c = ca.issue(spiffe, key.public_key())
    return WorkloadTls(spiffe.uri, c.cert_pem, key_pem(key), ca.bundle_pem(), c.serial, c.not_before, c.not_after,
                       c.issued_at)


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.005)
