"""Long plaintext HTTP/1 bodies moved by splice(2) (dataplane.splice), through the real sidecar on
loopback: byte-exact, exactly the body (the keep-alive connection's next bytes stay for the
parser), failures ending as on the ordinary path, timeouts and drain able to cut a pump, and the
spliced bytes counted in /stats, the Istio metrics and the access log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from httpkit import IPS, LO, on_one_port, service, sidecar, uvloop_test
from prometheus_client.parser import text_string_to_metric_families

from meshns.dataplane import accesslog, splice
from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.http1 import exchange
from meshns.dataplane.origdst import FixedResolver
from meshns.dataplane.server import Sidecar
from meshns.snapshot import Endpoint, HttpRoute, Service, ServicePort, Snapshot

BODY = random.Random(11).randbytes(8 << 20)


class App:
    """A raw HTTP/1.1 backend. Paths: /big/N (N bytes, Content-Length), /trail/N (then bytes
    after the body, unasked), /die/N (a third of the body, then close), /stall/N (a quarter,
    then silence), anything else a 5-byte body."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []  # (connection number, target)
        self.lost: list[int] = []  # connections that ended (by the peer or by us)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                target = head.split(b" ", 2)[1]
                self.requests.append((me, target))
                kind, _, n = target.decode().strip("/").partition("/")
                size = int(n) if n else 5
                body = BODY[:size] if n else b"small"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                if kind == "die":
                    writer.write(body[: size // 3])
                    await writer.drain()
                    return
                if kind == "stall":
                    writer.write(body[: size // 4])
                    await writer.drain()
                    await reader.read()  # silence, until the other end goes
                    return
                if kind == "trail":
                    writer.write(body + b"UNASKED BYTES")
                    await writer.drain()
                    continue
                for i in range(0, size, 256 * 1024):
                    writer.write(body[i:i + 256 * 1024])
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.lost.append(me)
            writer.close()


@contextlib.asynccontextmanager
async def app_server() -> AsyncIterator[tuple[int, App]]:
    app = App()
    async with on_one_port([lambda port: asyncio.start_server(app.handle, IPS[0], port)]) as port:
        yield port, app


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LO, port)


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Whatever arrives until the connection ends, by EOF or by a reset."""
    got = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(1 << 20):
            got += chunk
    return got


async def wait_lost(app: App) -> None:
    """Until the app has seen one of its connections lost (or 2 s)."""
    for _ in range(100):
        if app.lost:
            break
        await asyncio.sleep(0.02)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str,
              send: bool = True) -> tuple[bytes, bytes]:
    """One GET on a keep-alive connection; returns (head, body) read by its Content-Length."""
    if send:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


def metric(text: bytes, name: str) -> float:
    return sum(s.value for fam in text_string_to_metric_families(text.decode()) for s in fam.samples
               if s.name == name)


async def prometheus(side: Sidecar) -> bytes:
    assert side.admin_addr is not None
    r, w = await asyncio.open_connection(LO, side.admin_addr.port)
    w.write(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await r.read()
    w.close()
    return data.partition(b"\r\n\r\n")[2]


@contextlib.contextmanager
def access_lines() -> Any:
    lines: list[dict[str, Any]] = []
    real = accesslog.write

    def capture(line: str) -> None:
        lines.append(json.loads(line))

    level = accesslog.log.level
    accesslog.log.setLevel(logging.INFO)
    accesslog.write = capture  # type: ignore[assignment]
    try:
        yield lines
    finally:
        accesslog.write = real  # type: ignore[assignment]
        accesslog.log.setLevel(level)


@contextlib.contextmanager
def ordinary_path(on: bool) -> Iterator[None]:
    """With ``on``, no body is spliced: the same test on the path every byte went before."""
    saved = exchange.SPLICE_MIN_BYTES
    if on:
        exchange.SPLICE_MIN_BYTES = 1 << 62  # type: ignore[misc]
    try:
        yield
    finally:
        exchange.SPLICE_MIN_BYTES = saved  # type: ignore[misc]


def fd_names() -> list[str]:
    out = []
    for f in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(f + ":" + os.readlink(f"/proc/self/fd/{f}"))
    return sorted(out)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def outbound_port(side: Sidecar) -> int:
    assert side.outbound_addr is not None
    return side.outbound_addr.port


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_long_body_spliced_exact_then_keepalive_followups(parser: str) -> None:
    @uvloop_test
    async def run() -> None:
        sizes = [3_000_001, 70_000, 8 << 20]
        async with app_server() as (port, app), sidecar(service(port, 1), parser=parser, metrics_port=0) as side:
            with access_lines() as lines:
                r, w = await open_raw(outbound_port(side))
                for size in sizes:
                    head, body = await get(r, w, f"/big/{size}")
                    assert head.startswith(b"HTTP/1.1 200") and body == BODY[:size]
                    _, small = await get(r, w, "/small")  # the next response on the same connections
                    assert small == b"small"
                # pipelined: a long body then a short one, in one write
                w.write(b"GET /big/200000 HTTP/1.1\r\nHost: r\r\n\r\nGET /small HTTP/1.1\r\nHost: r\r\n\r\n")
                assert (await get(r, w, "", send=False))[1] == BODY[:200_000]
                assert (await get(r, w, "", send=False))[1] == b"small"
                w.close()
                await asyncio.sleep(0.1)
            total = sum(sizes) + 200_000 + 5 * (len(sizes) + 1)
            assert app.connections == 1 and len(app.requests) == 2 * len(sizes) + 2  # one upstream, reused
            # the long ones at least (a short one may come whole in the read that has its head)
            assert side.stats.http_spliced >= 2
            assert side.stats.outbound.bytes_down == total
            text = await prometheus(side)
            assert metric(text, "istio_response_bytes_sum") == total
            assert sorted(x["response_bytes"] for x in lines) == sorted([*sizes, 200_000] + [5] * (len(sizes) + 1))
            assert {x["status"] for x in lines} == {200}

    run()


@uvloop_test
async def test_short_bodies_are_not_spliced() -> None:
    async with app_server() as (port, _app), sidecar(service(port, 1)) as side:
        r, w = await open_raw(outbound_port(side))
        assert (await get(r, w, f"/big/{splice.SPLICE_MIN_BYTES - 1}"))[1] == BODY[:splice.SPLICE_MIN_BYTES - 1]
        w.close()
        assert side.stats.http_spliced == 0


@uvloop_test
async def test_bytes_after_the_body_are_never_spliced() -> None:
    """The pump moves exactly the body: what the upstream sent after it stays in its socket,
    where the ordinary path finds it (bytes on an idle connection: closed, not reused)."""
    async with app_server() as (port, app), sidecar(service(port, 1)) as side:
        r, w = await open_raw(outbound_port(side))
        _, body = await get(r, w, "/trail/500000")
        assert body == BODY[:500_000]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(1), 0.3)  # nothing more came to the client
        assert (await get(r, w, "/small"))[1] == b"small"
        w.close()
        assert side.stats.http_spliced == 1
        assert app.connections == 2  # the connection with unasked bytes was not reused


@pytest.mark.parametrize("ordinary", [False, True], ids=["spliced", "ordinary"])
def test_upstream_dying_mid_body_resets_the_client_and_is_not_pooled(ordinary: bool) -> None:
    """Ends as on the ordinary path (the same test runs on both)."""

    @uvloop_test
    async def run() -> None:
        async with app_server() as (port, app), sidecar(service(port, 1), metrics_port=0) as side:
            r, w = await open_raw(outbound_port(side))
            w.write(b"GET /die/3000000 HTTP/1.1\r\nHost: r\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert b"Content-Length: 3000000" in head
            got = await read_to_end(r)
            assert len(got) == 1_000_000 and got == BODY[:len(got)]  # truncated, never taken as whole
            w.close()
            assert side.stats.http_spliced == (0 if ordinary else 1)
            await asyncio.sleep(0.1)
            text = await prometheus(side)
            [flags] = [s.labels["response_flags"] for fam in text_string_to_metric_families(text.decode())
                       for s in fam.samples if s.name == "istio_requests_total"]
            assert flags == "UC,DC"  # the upstream failed, then the client was reset
            assert metric(text, "istio_response_bytes_sum") == len(got)
            r, w = await open_raw(outbound_port(side))
            assert (await get(r, w, "/small"))[1] == b"small"
            w.close()
            assert app.connections == 2

    with ordinary_path(ordinary):
        run()


@uvloop_test
async def test_client_gone_mid_body_aborts_the_upstream() -> None:
    async with app_server() as (port, app), sidecar(service(port, 1)) as side:
        fds = open_fds()
        r, w = await open_raw(outbound_port(side))
        w.write(b"GET /stall/8000000 HTTP/1.1\r\nHost: r\r\n\r\n")
        await r.readuntil(b"\r\n\r\n")
        await r.readexactly(100_000)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()  # a reset
        await wait_lost(app)
        assert app.lost == [1]  # the stalled upstream was cut, not parked in the pool
        assert side.stats.http_spliced == 1
        await asyncio.sleep(0.05)
        splice.PIPES.close_all()
        assert open_fds() <= fds  # no duplicated fd or pipe left behind


@pytest.mark.parametrize("ordinary", [False, True], ids=["spliced", "ordinary"])
def test_route_timeout_cuts_a_spliced_body(ordinary: bool) -> None:
    @uvloop_test
    async def run() -> None:
        async with app_server() as (port, app), sidecar(service(port, 1, routes=(HttpRoute(timeout_s=0.5),)),
                                                         metrics_port=0) as side:
            r, w = await open_raw(outbound_port(side))
            w.write(b"GET /stall/4000000 HTTP/1.1\r\nHost: r\r\n\r\n")
            await r.readuntil(b"\r\n\r\n")
            assert len(await read_to_end(r)) == 1_000_000  # cut by the route timeout (flags UT below)
            w.close()
            await wait_lost(app)
            assert side.stats.http_spliced == (0 if ordinary else 1) and app.lost == [1]
            text = await prometheus(side)
            [flags] = [s.labels["response_flags"] for fam in text_string_to_metric_families(text.decode())
                       for s in fam.samples if s.name == "istio_requests_total"]
            assert flags == "UT,DC"

    with ordinary_path(ordinary):
        run()


@uvloop_test
async def test_client_that_reads_nothing_is_cut_at_the_idle_timeout() -> None:
    async with app_server() as (port, app), sidecar(service(port, 1), idle_timeout_s=0.3) as side:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (LO, outbound_port(side)))
        _r, w = await asyncio.open_connection(sock=sock)
        w.write(b"GET /big/8000000 HTTP/1.1\r\nHost: r\r\n\r\n")
        for _ in range(150):
            if side.stats.idle_timeouts:
                break
            await asyncio.sleep(0.02)
        assert side.stats.idle_timeouts == 1 and side.stats.http_spliced == 1
        w.close()
        await wait_lost(app)
        assert app.lost == [1]


@uvloop_test
async def test_drain_cuts_a_stalled_splice_and_leaves_no_fds() -> None:
    async with app_server() as (port, app):
        fds = open_fds()
        async with sidecar(service(port, 1), drain_timeout_s=0.3) as side:
            r, w = await open_raw(outbound_port(side))
            w.write(b"GET /stall/4000000 HTTP/1.1\r\nHost: r\r\n\r\n")
            await r.readuntil(b"\r\n\r\n")
            await r.readexactly(1_000_000)
            assert side.stats.http_spliced == 1
        got = b""
        with contextlib.suppress(ConnectionError):
            got = await asyncio.wait_for(r.read(), 2)
        assert got == b""  # cut, and never completed
        w.close()
        await wait_lost(app)
        assert app.lost == [1]
        splice.PIPES.close_all()
        await asyncio.sleep(0.1)
        assert open_fds() <= fds, fd_names()


@contextlib.asynccontextmanager
async def inbound_sidecar(app_port: int) -> AsyncIterator[Sidecar]:
    cfg: dict[str, Any] = {"pod": "server-0", "pod_ip": LO, "outbound_port": 0, "inbound_port": 0,
                           "admin_port": 0, "metrics_port": 0, "probe_port": 15002}
    side = Sidecar(SidecarConfig(**cfg), resolver=FixedResolver(OrigDst(IPS[0], app_port)), rng=random.Random(3))
    side.store.set(Snapshot(version=1, pod="server-0", services=(
        Service("ratings", "10.96.0.2", (ServicePort(9080, app_port),), endpoints=(Endpoint("server-0", IPS[0]),)),
    )))
    await side.start()
    try:
        yield side
    finally:
        await side.drain()


@uvloop_test
async def test_inbound_long_body_spliced_to_a_plaintext_client() -> None:
    async with app_server() as (port, app), inbound_sidecar(port) as side:
        assert side.inbound_addr is not None
        r, w = await open_raw(side.inbound_addr.port)
        assert (await get(r, w, "/big/5000000"))[1] == BODY[:5_000_000]
        assert (await get(r, w, "/small"))[1] == b"small"
        assert (await get(r, w, "/big/100000"))[1] == BODY[:100_000]
        w.close()
        await asyncio.sleep(0.1)
        assert app.connections == 1 and side.stats.http_spliced >= 1
        assert side.stats.inbound.bytes_down == 5_100_005
        assert metric(await prometheus(side), "istio_response_bytes_sum") == 5_100_005
        # the app dying mid-body: the client is reset
        r, w = await open_raw(side.inbound_addr.port)
        w.write(b"GET /die/900000 HTTP/1.1\r\nHost: r\r\n\r\n")
        await r.readuntil(b"\r\n\r\n")
        assert len(await read_to_end(r)) == 300_000
        w.close()


class Owner:
    def __init__(self) -> None:
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.blocks = 0

    def splice_done(self, pump: splice.SplicePump) -> None:
        self.ended.set_result("done")

    def splice_src_failed(self, pump: splice.SplicePump, why: str) -> None:
        self.ended.set_result("src: " + why)

    def splice_dst_failed(self, pump: splice.SplicePump, why: str) -> None:
        self.ended.set_result("dst: " + why)

    def splice_blocked(self, blocked: bool) -> None:
        self.blocks += blocked


class Keep(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        if not self.eof.done():
            self.eof.set_result(None)


async def tcp_pair() -> tuple[asyncio.Transport, Keep, asyncio.Transport, Keep]:
    """Two connected uvloop transports (client end, server end) on loopback."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Keep] = loop.create_future()

    def made() -> Keep:
        p = Keep()
        accepted.set_result(p)
        return p

    srv = await loop.create_server(made, LO, 0)
    t, p = await loop.create_connection(Keep, LO, srv.sockets[0].getsockname()[1])
    q = await accepted
    srv.close()
    return t, p, q.transport, q  # type: ignore[return-value]


@pytest.mark.parametrize("pipe_size", [4096, 1 << 20])
def test_pump_moves_exactly_total_through_a_slow_reader(pipe_size: int) -> None:
    @uvloop_test
    async def run() -> None:
        src_far, _, src, src_p = await tcp_pair()  # src_far writes, the pump reads src
        dst, _, dst_far, dst_far_p = await tcp_pair()  # the pump writes dst, dst_far receives
        total = len(BODY) - 15
        dst.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        dst_far.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        head = b"H" * (1 << 20)
        dst.write(head)  # still in the destination transport's buffer: goes first
        src.pause_reading()
        src_far.write(BODY[:total] + b"NEXT")
        dst_far.pause_reading()  # a reader that takes nothing for a while: the pump blocks
        owner = Owner()
        pool = splice.PipePool(size=pipe_size)
        pump = splice.SplicePump(asyncio.get_running_loop(), owner, src, dst, total, pipes=pool)
        pump.start()
        assert pump.waiting_drain and dst.get_write_buffer_size() > 0
        await asyncio.sleep(0.2)
        assert not owner.ended.done()
        for t, opt in ((dst, socket.SO_SNDBUF), (dst_far, socket.SO_RCVBUF)):  # full speed from here
            t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        dst_far.resume_reading()
        assert await asyncio.wait_for(owner.ended, 20) == "done"
        assert pump.moved == total and not pump.running and len(pool.free) == 1
        src.resume_reading()  # what follows the body is still in the source socket
        for _ in range(100):
            if len(dst_far_p.data) == len(head) + total and src_p.data == b"NEXT":
                break
            await asyncio.sleep(0.01)
        assert bytes(dst_far_p.data) == head + BODY[:total]
        assert src_p.data == b"NEXT"
        pool.close_all()
        for t in (src_far, src, dst, dst_far):
            t.close()

    run()


@uvloop_test
async def test_pump_reports_source_eof_and_destination_reset() -> None:
    loop = asyncio.get_running_loop()
    src_far, _, src, _ = await tcp_pair()
    dst, _, dst_far, _ = await tcp_pair()
    src.pause_reading()
    src_far.write(BODY[:1000])
    src_far.write_eof()
    owner = Owner()
    splice.SplicePump(loop, owner, src, dst, 5000).start()
    assert (await asyncio.wait_for(owner.ended, 5)).startswith("src: upstream closed mid-body")
    # the destination goes away with a reset while the pump writes to it
    src_far2, _, src2, _ = await tcp_pair()
    src2.pause_reading()
    dst.pause_reading()  # as an exchange's client: its transport does not see the reset first
    sock = dst_far.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    dst_far.abort()
    await asyncio.sleep(0.05)
    src_far2.write(BODY[:500_000])
    owner2 = Owner()
    splice.SplicePump(loop, owner2, src2, dst, 500_000).start()
    assert (await asyncio.wait_for(owner2.ended, 5)).startswith("dst: downstream failed")
    for t in (src_far, src, dst, src_far2, src2):
        t.close()
