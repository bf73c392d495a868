"""HTTP/1.1 streaming, framing and detection through the sidecar: big bodies with bounded
buffering, upgrades, 100-continue, HEAD, HTTP/1.0 clients, non-HTTP protocols to a VIP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket

import h11
import pytest
from httpkit import BLOCK, LO, Backend, Client, backends, raw_exchange, service, sidecar, uvloop_test

from meshns.snapshot import ConnectionPool, Endpoint, Snapshot

MiB = 1024 * 1024


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_chunked_download_64mib_bounded(parser: str) -> None:
    total = 64 * MiB if parser == "httptools" else 16 * MiB  # h11 is slow; same code path

    @uvloop_test
    async def run() -> None:
        async with backends() as (port, _bes), sidecar(service(port), parser=parser) as side:
            assert side.outbound_addr is not None
            loop = asyncio.get_running_loop()
            sock = socket.create_connection((LO, side.outbound_addr.port))
            sock.setblocking(False)
            await loop.sock_sendall(sock, f"GET /bulk/{total} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
            peak = 0
            for _ in range(40):  # not reading for a while: the sidecar must stop reading too
                await asyncio.sleep(0.02)
                peak = max(peak, side.buffered_bytes())
            conn = h11.Connection(h11.CLIENT)
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "r")]))
            conn.send(h11.EndOfMessage())
            digest, got, done = hashlib.sha256(), 0, False
            while not done:
                conn.receive_data(await loop.sock_recv(sock, MiB))
                peak = max(peak, side.buffered_bytes())
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        break
                    if isinstance(ev, h11.Response):
                        assert (b"transfer-encoding", b"chunked") in list(ev.headers)
                    elif isinstance(ev, h11.Data):
                        digest.update(ev.data)
                        got += len(ev.data)
                    elif isinstance(ev, h11.EndOfMessage):
                        done = True
                        break
            sock.close()
            want = hashlib.sha256(BLOCK * (total // MiB)).hexdigest()
            assert got == total
            assert digest.hexdigest() == want
            assert peak < 4 * MiB, peak

    run()


@uvloop_test
async def test_chunked_upload_64mib_bounded() -> None:
    total = 64 * MiB
    async with backends() as (port, _bes), sidecar(service(port)) as side:
        assert side.outbound_addr is not None
        reader, writer = await asyncio.open_connection(LO, side.outbound_addr.port)
        writer.write(b"POST /up HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n")
        peak = 0
        for _ in range(total // MiB):
            writer.write(b"%x\r\n" % len(BLOCK) + BLOCK + b"\r\n")
            await writer.drain()
            peak = max(peak, side.buffered_bytes())
        writer.write(b"0\r\n\r\n")
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        fields = body.split()
        assert fields[2] == b"/up"
        assert int(fields[3]) == total
        assert fields[4].decode() == hashlib.sha256(BLOCK * (total // MiB)).hexdigest()
        assert peak < 4 * MiB, peak
        writer.close()


@uvloop_test
async def test_head_and_http10_clients() -> None:
    async with backends() as (port, _bes), sidecar(service(port)) as side:
        client = await Client.open(side)
        reply = await client.request("HEAD", "/h")
        assert reply.status == 200 and reply.body == b""
        assert int(reply.headers["content-length"]) > 0
        assert (await client.request("GET", "/after-head")).status == 200  # still in sync
        client.close()
        # HTTP/1.0 without keep-alive: answered and closed; a chunked upstream body arrives
        # close-delimited, never chunked.
        out = await raw_exchange(side, b"GET /bulk/5000 HTTP/1.0\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower()
        assert b"connection: close" in head.lower()
        assert body == BLOCK[:5000]
        # HTTP/1.0 with keep-alive: content-length responses, connection kept
        assert side.outbound_addr is not None
        reader, writer = await asyncio.open_connection(LO, side.outbound_addr.port)
        for i in range(2):
            writer.write(f"GET /k{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            head = await read_head(reader)
            assert b"keep-alive" in head.lower()
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert f"/k{i}".encode() in await reader.readexactly(length)
        writer.close()


@uvloop_test
async def test_expect_100_continue_is_forwarded_from_upstream() -> None:
    async with backends() as (port, _bes), sidecar(service(port)) as side:
        assert side.outbound_addr is not None
        reader, writer = await asyncio.open_connection(LO, side.outbound_addr.port)
        writer.write(b"PUT /c HTTP/1.1\r\nHost: r\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        assert await asyncio.wait_for(read_head(reader), 3) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert (await reader.readexactly(length)).split()[3] == b"5"
        writer.close()


def upgrade_echo(be: Backend):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhi!")
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
        writer.close()

    return handle


@uvloop_test
async def test_websocket_style_upgrade_echo() -> None:
    async with backends(handler=upgrade_echo) as (port, _bes), sidecar(service(port)) as side:
        assert side.outbound_addr is not None
        reader, writer = await asyncio.open_connection(LO, side.outbound_addr.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: echo" in head.lower()
        assert await reader.readexactly(3) == b"hi!"
        for i in range(5):
            msg = f"frame {i}".encode() * 1000
            writer.write(msg)
            assert await reader.readexactly(len(msg)) == msg
        writer.close()


@uvloop_test
async def test_snapshot_swapped_mid_stream_request_completes() -> None:
    total = 32 * MiB
    async with backends() as (port, _bes), sidecar(service(port)) as side:
        assert side.outbound_addr is not None
        reader, writer = await asyncio.open_connection(LO, side.outbound_addr.port)
        writer.write(f"GET /bulk/{total} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
        await read_head(reader)
        got = len(await reader.read(MiB))
        new = service(port, endpoints=(Endpoint("only", "127.0.0.4"),))
        side.store.set(Snapshot(version=2, pod="client", services=(new,)))
        while got < total + 1000:
            data = await reader.read(MiB)
            if not data or data.endswith(b"0\r\n\r\n"):
                got += len(data)
                break
            got += len(data)
        assert got > total
        # the next request on the same connection already sees the new snapshot
        for _ in range(3):
            writer.write(b"GET /n HTTP/1.1\r\nHost: r\r\n\r\n")
            head = await read_head(reader)
            assert b"X-Backend: 127.0.0.4" in head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()


@uvloop_test
async def test_upstream_close_mid_response_resets_client() -> None:
    async with backends() as (port, bes), sidecar(service(port)) as side:
        for b in bes:
            b.mode = "midclose"
            b.body_size = 100_000
        client = await Client.open(side)
        with pytest.raises((ConnectionError, h11.RemoteProtocolError)):
            await client.request("GET", "/")
        client.close()


def banner(be: Backend):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"220 {be.ip} ESMTP\r\n".encode())
        line = await reader.readline()
        writer.write(b"250 " + line)
        writer.close()

    return handle


def redis(be: Backend):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while await reader.readuntil(b"PING\r\n"):
                writer.write(b"+PONG\r\n")
        writer.close()

    return handle


@uvloop_test
async def test_server_first_protocol_through_vip() -> None:
    async with backends(handler=banner) as (port, _bes), sidecar(service(port)) as side:
        assert side.outbound_addr is not None
        reader, writer = await asyncio.open_connection(LO, side.outbound_addr.port)
        line = await asyncio.wait_for(reader.readline(), 2)
        assert line.startswith(b"220 127.0.0.")
        writer.write(b"EHLO me\r\n")
        assert await reader.readline() == b"250 EHLO me\r\n"
        writer.close()


@uvloop_test
async def test_client_first_non_http_protocol_through_vip() -> None:
    async with backends(handler=redis) as (port, _bes), sidecar(service(port)) as side:
        assert side.outbound_addr is not None
        reader, writer = await asyncio.open_connection(LO, side.outbound_addr.port)
        for _ in range(3):
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            assert await asyncio.wait_for(reader.readline(), 2) == b"+PONG\r\n"
        writer.close()


@uvloop_test
async def test_tcp_to_service_skips_dead_endpoint_and_silent_client_without_endpoints() -> None:
    async with backends(1, handler=redis) as (port, _bes):
        svc = service(port, endpoints=(Endpoint("dead", "127.0.0.5"), Endpoint("a", "127.0.0.2")))
        async with sidecar(svc) as side:
            for _ in range(2):
                out = await raw_exchange(side, b"*1\r\n$4\r\nPING\r\n", half_close=True)
                assert out == b"+PONG\r\n"
        async with sidecar(service(port, endpoints=(), pool=ConnectionPool(connect_timeout_s=0.2))) as side:
            assert side.outbound_addr is not None
            reader, _writer = await asyncio.open_connection(LO, side.outbound_addr.port)
            assert await asyncio.wait_for(reader.read(), 2) == b""


@pytest.mark.parametrize("parser", ["h11", "httptools"])
@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: r\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"Host: r\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
])
def test_bad_requests(parser: str, request_bytes: bytes, status: int) -> None:
    @uvloop_test
    async def run() -> None:
        async with backends() as (port, bes), sidecar(service(port), parser=parser) as side:
            out = await raw_exchange(side, request_bytes)
            assert out.startswith(b"HTTP/1.1 %d" % status), out[:100]
            assert side.stats.http_bad_requests == 1
            assert sum(b.requests for b in bes) == 0

    run()


