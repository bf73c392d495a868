"""The pure part of dataplane.splice: which bodies may move in the kernel, which transports are
plain TCP, and the pipe free list."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import ssl

import pytest
import uvloop

from meshns.dataplane.http1.upstream import HEAD_READ, READ_BYTES, UpstreamConn
from meshns.dataplane.splice import SPLICE_MIN_BYTES, PipePool, can_splice, plain_tcp
from meshns.dataplane.tls_transport import TlsStream

M = SPLICE_MIN_BYTES


@pytest.mark.parametrize(("src", "dst", "framed", "reframed", "remaining", "expected"), [
    (True, True, True, False, M, True),  # the smallest body that is spliced
    (True, True, True, False, 1 << 30, True),
    (True, True, True, False, M - 1, False),  # short: the ordinary path
    (True, True, True, False, 0, False),
    (False, True, True, False, M, False),  # TLS from the upstream (mTLS to the server sidecar)
    (True, False, True, False, M, False),  # TLS to the client (mTLS from the client sidecar)
    (False, False, True, False, M, False),
    (True, True, False, False, M, False),  # chunked or close-delimited: the parser finds the end
    (True, True, True, True, M, False),  # re-chunked for the client: the proxy writes framing
])
def test_can_splice(src: bool, dst: bool, framed: bool, reframed: bool, remaining: int, expected: bool) -> None:
    assert can_splice(src_plain=src, dst_plain=dst, length_framed=framed, reframed=reframed,
                      remaining=remaining) is expected


def test_can_splice_threshold_zero_disables() -> None:
    assert not can_splice(src_plain=True, dst_plain=True, length_framed=True, reframed=False, remaining=10,
                          min_bytes=0)


def test_plain_tcp_only_for_uvloop_tcp_transports() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        t, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        assert plain_tcp(t)
        t.close()
        stream = TlsStream(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), server_side=False)
        assert not plain_tcp(stream)  # our TLS: its socket carries records, not the body
        assert not plain_tcp(object())
        srv.close()

    uvloop.run(main())


def test_plain_tcp_not_for_other_loops_transports() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        assert not plain_tcp(t)  # asyncio's own transports are not uvloop's: not spliced
        t.close()
        b.close()

    asyncio.run(main())


def test_pipe_pool_reuses_and_bounds() -> None:
    pool = PipePool(keep=2, size=1 << 16)
    pipes = [pool.get() for _ in range(3)]
    assert len({p[0] for p in pipes}) == 3
    for r, w, cap in pipes:
        assert cap == fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) >= 1 << 16
        assert os.get_blocking(r) is False and os.get_blocking(w) is False
    for p in pipes:
        pool.put(p)
    assert len(pool.free) == 2
    with pytest.raises(OSError):
        os.fstat(pipes[2][0])  # the third was closed, not kept
    again = pool.get()
    assert again == pipes[1]  # last in, first out
    pool.put(again)
    pool.close_all()
    assert pool.free == []
    with pytest.raises(OSError):
        os.fstat(again[0])


def test_upstream_reads_a_response_head_short_then_whole_buffers() -> None:
    """The first read of a response takes at most HEAD_READ bytes, so a long body stays in the
    socket for the splice; later reads (and a TLS stream's plaintext) are handed on whole."""
    got: list[bytes] = []

    class User:
        def up_data(self, conn: UpstreamConn, data: bytes) -> None:
            got.append(data)

    class Pool:
        def drop(self, conn: UpstreamConn) -> None:
            pass

    conn = UpstreamConn(Pool(), ("127.0.0.1", 1))
    conn.user = User()  # type: ignore[assignment]
    conn.head_next = True  # as Exchange.attach sets it
    buf = conn.get_buffer(-1)
    assert len(buf) == HEAD_READ
    buf[:5] = b"HTTP/"
    conn.buffer_updated(5)
    assert got == [b"HTTP/"] and not conn.head_next
    buf = conn.get_buffer(-1)
    assert len(buf) == READ_BYTES
    buf[:3] = b"abc"
    conn.buffer_updated(3)
    conn.data_received(b"tls plaintext")
    assert got == [b"HTTP/", b"abc", b"tls plaintext"]
