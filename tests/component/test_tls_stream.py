"""The sidecar's TLS transport (dataplane/tls_transport.py) moving long streams over loopback on
uvloop: plaintext crosses the memory BIOs at most SLICE bytes at a time (reads into one buffer,
sliced writes, records handed on joined), and none of that may lose, reorder or hold back a byte,
nor change how a half-close travels."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

from httpkit import until, uvloop_test, workload

from meshns.dataplane import tls_transport
from meshns.dataplane.tls_transport import TlsStream
from meshns.mtls.ca import CertAuthority
from meshns.mtls.tls import client_context, server_context

LO = "127.0.0.1"
TD = "example.org"


class Sink(asyncio.Protocol):
    """The app above a stream: keeps what arrives, notes the EOF, stays open after it."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.sizes: list[int] = []
        self.eof = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)  # the relay and parsers keep these: never a view of a reused buffer
        self.got += data
        self.sizes.append(len(data))

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return True


async def pair(tmp_path: Path, contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
               session: ssl.SSLSession | None = None) -> tuple[TlsStream, Sink, TlsStream, Sink]:
    """A handshaken, attached client and server stream on one loopback connection.
    ``contexts``: (client, server), new ones if None; ``session``: the client offers it."""
    if contexts is None:
        ca = CertAuthority.ensure(tmp_path / "ca", TD, 3600.0)
        contexts = client_context(workload(ca, "client")), server_context(workload(ca, "server"))
    client_ctx, server_ctx = contexts
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[TlsStream] = asyncio.Queue()

    def factory() -> TlsStream:
        stream = TlsStream(server_ctx, server_side=True)
        accepted.put_nowait(stream)
        return stream

    srv = await loop.create_server(factory, LO, 0)
    try:
        port = srv.sockets[0].getsockname()[1]
        _, c = await loop.create_connection(lambda: TlsStream(client_ctx, server_side=False, session=session),
                                            LO, port)
        s = await accepted.get()
        await asyncio.gather(c.handshake(5.0), s.handshake(5.0))
    finally:
        srv.close()
    c_app, s_app = Sink(), Sink()
    c.attach(c_app)
    s.attach(s_app)
    return c, c_app, s, s_app


@uvloop_test
async def test_long_writes_arrive_whole_in_order_then_half_close(tmp_path: Path) -> None:
    c, c_app, s, s_app = await pair(tmp_path)
    big = os.urandom(1024 * 1024 + 12345)  # several slices, the last one short
    small = [os.urandom(n) for n in (1, 700, 5000)]
    c.write(big)
    c.writelines([small[0], big[:300_000], small[1]])  # small ones around a sliced one, in order
    c.writelines(small)  # joined into one record
    c.write(memoryview(big)[:tls_transport.SLICE])  # exactly one slice
    expected = big + small[0] + big[:300_000] + small[1] + b"".join(small) + big[:tls_transport.SLICE]
    c.write_eof()  # close_notify after all of it: the server sees every byte, then the EOF
    await s_app.eof
    assert bytes(s_app.got) == expected
    assert max(s_app.sizes) <= tls_transport.SLICE  # handed up a slice at most at a time
    # Half-close: the server still answers on its open side.
    s.write(big)
    s.write_eof()
    await c_app.eof
    assert bytes(c_app.got) == big
    c.close()
    s.close()


@uvloop_test
async def test_bytes_fed_by_data_received_decrypt_the_same(tmp_path: Path) -> None:
    # A transport that calls data_received (not get_buffer/buffer_updated) with chunks larger
    # than a slice: the stream feeds its BIO a slice at a time and loses nothing.
    c, _, s, s_app = await pair(tmp_path)
    s.raw.pause_reading()  # type: ignore[union-attr]
    payload = os.urandom(700_000)
    captured = bytearray()
    raw = c.raw
    assert raw is not None

    class Capture:
        """Stands in for the client's socket for one write: keeps the ciphertext."""

        def writelines(self, pieces: list[bytes]) -> None:
            for p in pieces:
                captured.extend(p)

        def write(self, data: bytes) -> None:
            captured.extend(data)

        def is_closing(self) -> bool:
            return False

    c.raw = Capture()  # type: ignore[assignment]
    c.write(payload)
    c.raw = raw
    s.data_received(bytes(captured))
    assert bytes(s_app.got) == payload
    # Records decrypted together are handed up joined (here all were there at once): a slice at
    # most, and on average more than two records per call.
    assert max(s_app.sizes) <= tls_transport.SLICE
    assert len(s_app.sizes) <= len(payload) // (2 * tls_transport.RECORD)
    c.close()
    s.close()
    await until(lambda: s.lost and c.lost)


@uvloop_test
async def test_the_ticket_read_after_the_handshake_resumes_the_next_connection(tmp_path: Path) -> None:
    ca = CertAuthority.ensure(tmp_path / "ca", TD, 3600.0)
    contexts = client_context(workload(ca, "client")), server_context(workload(ca, "server"))
    c, c_app, s, s_app = await pair(tmp_path, contexts)
    assert not c.resumed and not s.resumed
    tickets: list[ssl.SSLSession] = []
    c.want_ticket(tickets.append)
    s.write(b"greeting")  # the ticket came first; whatever the client reads next brings it in
    await until(lambda: bytes(c_app.got) == b"greeting")
    assert len(tickets) == 1 and tickets[0].has_ticket
    c.write(b"more")
    s.write(b"more")
    await until(lambda: bytes(c_app.got) == b"greetingmore" and bytes(s_app.got) == b"more")
    assert len(tickets) == 1  # handed over once
    c2, c2_app, s2, s2_app = await pair(tmp_path, contexts, session=tickets[0])
    assert c2.resumed and s2.resumed
    assert s2.peercert is not None and c2.peercert is not None  # still there to verify
    c2.write(b"ping")
    s2.write(b"pong")
    await until(lambda: bytes(s2_app.got) == b"ping" and bytes(c2_app.got) == b"pong")
    for stream in (c, s, c2, s2):
        stream.close()
    await until(lambda: all(x.lost for x in (c, s, c2, s2)))
