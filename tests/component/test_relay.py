"""The sidecar in-process on 127.0.0.1 with ephemeral ports and a FixedResolver (no root, no iptables).

Every test runs its own uvloop loop; upstream servers are plain asyncio servers on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from httpkit import uvloop_test

from meshns.dataplane.addrs import ListenAddr, OrigDst
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.connect import Connector, tcp_connect
from meshns.dataplane.decide import Forward
from meshns.dataplane.origdst import FixedResolver
from meshns.dataplane.server import Sidecar
from meshns.errors import SystemFailure

LO = "127.0.0.1"


def test_config(**over: Any) -> SidecarConfig:
    base: dict[str, Any] = {
        "pod": "test-pod", "pod_ip": LO, "outbound_port": 0, "inbound_port": 0, "admin_port": 0,
        "probe_port": 15002,
    }
    base.update(over)
    return SidecarConfig(**base)


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@contextlib.asynccontextmanager
async def sidecar(target: OrigDst, connector: Connector = tcp_connect, **over: Any) -> AsyncIterator[Sidecar]:
    side = Sidecar(test_config(**over), resolver=FixedResolver(target), connector=connector)
    await side.start()
    try:
        yield side
    finally:
        await side.drain()


@contextlib.asynccontextmanager
async def upstream(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[OrigDst]:
    server = await asyncio.start_server(handler, LO, 0)
    try:
        yield OrigDst(LO, server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()


async def dial(addr: ListenAddr | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert addr is not None
    return await asyncio.open_connection(LO, addr.port)


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until EOF; a reset also counts as the end (the sidecar may abort)."""
    chunks = []
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            chunks.append(data)
    return b"".join(chunks)


async def wait_for_value(get: Callable[[], object], want: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while get() != want:
            await asyncio.sleep(0.01)


async def admin_get(side: Sidecar, path: str) -> tuple[int, bytes]:
    assert side.admin_addr is not None
    reader, writer = await asyncio.open_connection(LO, side.admin_addr.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await read_to_end(reader)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_echo_round_trip(direction: str) -> None:
    seen_peers: list[str] = []

    async def recording_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen_peers.append(writer.get_extra_info("peername")[0])
        await echo(reader, writer)

    @uvloop_test
    async def run() -> None:
        async with upstream(recording_echo) as target, sidecar(target) as side:
            listen = side.outbound_addr if direction == "outbound" else side.inbound_addr
            reader, writer = await dial(listen)
            for i in range(3):
                msg = f"hello {i}\n".encode() * 1000
                writer.write(msg)
                assert await reader.readexactly(len(msg)) == msg
            writer.write_eof()
            assert await read_to_end(reader) == b""
            writer.close()
            await wait_for_value(lambda: side.stats.active, 0)
            dstats = getattr(side.stats, direction)
            assert dstats.accepted == 1
            assert dstats.bytes_up == dstats.bytes_down == sum(len(f"hello {i}\n") * 1000 for i in range(3))

    run()
    # The inbound hop uses the configured source address so interception lets it pass.
    assert seen_peers == ["127.0.0.1" if direction == "outbound" else "127.0.0.6"]


@uvloop_test
async def test_half_close_reply_after_client_eof() -> None:
    async def count_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's FIN
        writer.write(f"got {len(data)} bytes\n".encode())
        await writer.drain()
        writer.close()

    async with upstream(count_then_reply) as target, sidecar(target) as side:
        reader, writer = await dial(side.outbound_addr)
        writer.write(b"x" * 300_000)
        writer.write_eof()
        assert await read_to_end(reader) == b"got 300000 bytes\n"
        writer.close()
        await wait_for_value(lambda: side.stats.active, 0)


@uvloop_test
async def test_server_first_banner_flows_before_client_sends() -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.example ESMTP ready\r\n")
        await writer.drain()
        assert await reader.readline() == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")
        writer.close()

    async with upstream(banner) as target, sidecar(target) as side:
        reader, writer = await dial(side.outbound_addr)
        assert await asyncio.wait_for(reader.readline(), 2) == b"220 mail.example ESMTP ready\r\n"
        writer.write(b"QUIT\r\n")
        assert await read_to_end(reader) == b"221 bye\r\n"
        writer.close()


@uvloop_test
async def test_slow_reader_keeps_sidecar_buffers_bounded() -> None:
    total = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    want = hashlib.sha256(block * (total // len(block))).hexdigest()

    async def bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    async with upstream(bulk) as target, sidecar(target) as side:
        # A raw socket read by hand: no stream buffer on our side hiding what the sidecar holds.
        loop = asyncio.get_running_loop()
        assert side.outbound_addr is not None
        client = socket.create_connection((LO, side.outbound_addr.port))
        client.setblocking(False)
        peak = 0
        for _ in range(50):  # ~1 s of not reading at all
            await asyncio.sleep(0.02)
            peak = max(peak, side.buffered_bytes())
        digest, got = hashlib.sha256(), 0
        while chunk := await loop.sock_recv(client, 1024 * 1024):
            digest.update(chunk)
            got += len(chunk)
            peak = max(peak, side.buffered_bytes())
        client.close()
        assert got == total
        assert digest.hexdigest() == want
        assert peak < 4 * 1024 * 1024, peak
        await wait_for_value(lambda: side.stats.active, 0)
        assert side.stats.outbound.bytes_down == total


@uvloop_test
async def test_upstream_refused_closes_client_and_counts() -> None:
    probe = socket.socket()
    probe.bind((LO, 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connect is refused
    async with sidecar(OrigDst(LO, closed_port)) as side:
        reader, writer = await dial(side.outbound_addr)
        writer.write(b"hello")
        assert await read_to_end(reader) == b""
        writer.close()
        await wait_for_value(lambda: side.stats.active, 0)
        assert side.stats.connect_failures == 1


@uvloop_test
async def test_connect_timeout_with_full_accept_queue() -> None:
    # A listener that never accepts, with its accept queue filled: Linux drops further SYNs, so a
    # connect to it hangs until our timeout. Loopback only.
    sink = socket.socket()
    sink.bind((LO, 0))
    sink.listen(0)
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(sink.getsockname())
        fillers.append(s)
    await asyncio.sleep(0.1)
    try:
        async with sidecar(OrigDst(LO, sink.getsockname()[1]), connect_timeout_s=0.3) as side:
            reader, writer = await dial(side.outbound_addr)
            started = asyncio.get_running_loop().time()
            assert await read_to_end(reader) == b""
            assert asyncio.get_running_loop().time() - started < 3
            writer.close()
            await wait_for_value(lambda: side.stats.active, 0)
            assert side.stats.connect_timeouts == 1
    finally:
        for s in [*fillers, sink]:
            s.close()


@uvloop_test
async def test_connect_timeout_with_injected_connector() -> None:
    async def never(factory: Callable[[], asyncio.Protocol], fwd: Forward) -> None:
        await asyncio.Event().wait()

    async with sidecar(OrigDst(LO, 9), connector=never, connect_timeout_s=0.1) as side:
        reader, writer = await dial(side.outbound_addr)
        assert await read_to_end(reader) == b""
        writer.close()
        await wait_for_value(lambda: side.stats.active, 0)
        assert side.stats.connect_timeouts == 1
        assert side.stats.connect_failures == 0


@uvloop_test
async def test_bytes_sent_before_upstream_connects_are_buffered_bounded_then_delivered() -> None:
    gate = asyncio.Event()

    async def slow_connect(factory: Callable[[], asyncio.Protocol], fwd: Forward) -> None:
        await gate.wait()
        await tcp_connect(factory, fwd)

    payload = os.urandom(1024 * 1024)
    async with upstream(echo) as target, sidecar(target, connector=slow_connect) as side:
        reader, writer = await dial(side.outbound_addr)
        writer.write(payload)
        writer.write_eof()
        await asyncio.sleep(0.3)
        # Paused at PRECONNECT_LIMIT: the rest waits in the kernel, not in the sidecar.
        assert side.buffered_bytes() < 512 * 1024
        gate.set()
        assert await read_to_end(reader) == payload
        writer.close()


@uvloop_test
async def test_idle_timeout_closes_both_sides() -> None:
    upstream_saw_end = asyncio.Event()

    async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_to_end(reader)
        upstream_saw_end.set()
        writer.close()

    async with upstream(quiet) as target, sidecar(target, idle_timeout_s=0.2) as side:
        reader, writer = await dial(side.outbound_addr)
        writer.write(b"one message, then silence")
        started = asyncio.get_running_loop().time()
        assert await read_to_end(reader) == b""
        # Between 1x and 2x the timeout (lazily re-armed timer), with slack for a busy machine.
        assert asyncio.get_running_loop().time() - started < 2
        await asyncio.wait_for(upstream_saw_end.wait(), 2)
        writer.close()
        await wait_for_value(lambda: side.stats.active, 0)
        assert side.stats.idle_timeouts == 1


@uvloop_test
async def test_activity_keeps_connection_past_idle_timeout() -> None:
    async with upstream(echo) as target, sidecar(target, idle_timeout_s=0.2) as side:
        reader, writer = await dial(side.outbound_addr)
        for _ in range(10):  # 1 s in total, never 0.2 s silent
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            await asyncio.sleep(0.1)
        assert side.stats.idle_timeouts == 0
        writer.close()


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_probe_answers_original_destination(direction: str) -> None:
    @uvloop_test
    async def run() -> None:
        # Never dialled: the sidecar answers probes itself.
        async with sidecar(OrigDst("10.252.0.5", 15002)) as side:
            listen = side.outbound_addr if direction == "outbound" else side.inbound_addr
            reader, writer = await dial(listen)
            assert await read_to_end(reader) == f"meshns-probe {direction} 10.252.0.5:15002\n".encode()
            writer.close()
            await wait_for_value(lambda: side.stats.active, 0)
            assert side.stats.probes == 1

    run()


@uvloop_test
async def test_connection_to_own_listener_is_rejected() -> None:
    resolver = FixedResolver(OrigDst(LO, 1))
    side = Sidecar(test_config(), resolver=resolver)
    await side.start()
    try:
        assert side.outbound_addr is not None
        resolver.dst = OrigDst(LO, side.outbound_addr.port)
        reader, writer = await dial(side.outbound_addr)
        assert await read_to_end(reader) == b""
        writer.close()
        await wait_for_value(lambda: side.stats.active, 0)
        assert side.stats.rejects == 1
        assert side.stats.outbound.accepted == 1  # and nothing more: no second, looped connection
    finally:
        await side.drain()


@uvloop_test
async def test_upstream_reset_aborts_client() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async with upstream(reset) as target, sidecar(target) as side:
        reader, writer = await dial(side.outbound_addr)
        writer.write(b"x")
        assert await read_to_end(reader) == b""
        writer.close()
        await wait_for_value(lambda: side.stats.active, 0)


@uvloop_test
async def test_admin_ready_stats_and_404() -> None:
    async with upstream(echo) as target, sidecar(target) as side:
        assert await admin_get(side, "/ready") == (200, b"ready\n")
        reader, writer = await dial(side.outbound_addr)
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"abc"
        status, body = await admin_get(side, "/stats")
        assert status == 200
        doc = json.loads(body)
        assert doc["pod"] == "test-pod"
        assert doc["pid"] == os.getpid()
        assert doc["active"] == 1
        assert doc["outbound"] == {"accepted": 1, "bytes_up": 3, "bytes_down": 3}
        assert {"uptime_s", "inbound", "connect_failures", "connect_timeouts", "rejects", "probes",
                "idle_timeouts", "resolve_failures", "peer_errors", "ready", "draining"} <= doc.keys()
        assert (await admin_get(side, "/nope"))[0] == 404
        writer.close()


@uvloop_test
async def test_drain_waits_for_active_then_cuts() -> None:
    async with upstream(echo) as target:
        side = Sidecar(test_config(drain_timeout_s=0.5), resolver=FixedResolver(target))
        await side.start()
        reader, writer = await dial(side.outbound_addr)
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"abc"
        drain = asyncio.ensure_future(side.drain())
        await asyncio.sleep(0.1)
        assert not side.ready
        assert side.admin_addr is not None
        # still relaying while draining
        writer.write(b"def")
        assert await reader.readexactly(3) == b"def"
        # new connections are refused
        with pytest.raises(ConnectionRefusedError):
            await dial(side.outbound_addr)
        await asyncio.wait_for(drain, 3)
        assert await read_to_end(reader) == b""
        assert side.stats.active == 0
        writer.close()


@uvloop_test
async def test_admin_says_503_while_draining() -> None:
    async with upstream(echo) as target:
        side = Sidecar(test_config(drain_timeout_s=1.0), resolver=FixedResolver(target))
        await side.start()
        reader, writer = await dial(side.outbound_addr)
        writer.write(b"abc")
        await reader.readexactly(3)
        drain = asyncio.ensure_future(side.drain())
        await asyncio.sleep(0.05)
        assert await admin_get(side, "/ready") == (503, b"draining\n")
        writer.close()  # the last connection ends: drain finishes before its deadline
        await asyncio.wait_for(drain, 3)


@uvloop_test
async def test_bind_conflict_is_a_system_failure_and_releases_listeners() -> None:
    taken = socket.create_server((LO, 0))
    try:
        side = Sidecar(test_config(admin_port=taken.getsockname()[1]), resolver=FixedResolver(OrigDst(LO, 1)))
        with pytest.raises(SystemFailure, match="cannot bind admin listener"):
            await side.start()
        assert side.outbound_addr is not None
        # the outbound listener bound before the failure was closed again: its port is free
        socket.create_server((LO, side.outbound_addr.port)).close()
        assert not side.ready
    finally:
        taken.close()
