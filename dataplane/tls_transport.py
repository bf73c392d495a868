"""TLS between sidecars on our own memory-BIO transport, because it must half-close.

asyncio's (and uvloop's) SSL transports cannot ``write_eof``, and they close the whole connection
on the peer's close_notify. A relay needs both: a client that sends its request and shuts down
its write side must still get the reply (``socat -t``, ``nc -N``, rsh-style protocols). TLS 1.3
allows exactly that, and OpenSSL implements it: a close_notify ends one direction only. So here
a FIN from the app side becomes close_notify (+ FIN) on the wire, and a close_notify received
becomes ``eof_received`` on the other side, as Envoy maps them.

``TlsStream`` is the protocol of the raw TCP transport and, towards the relay, a transport
itself (write, writelines, write_eof, close, abort, pause/resume_reading, flow control). The
handshake runs first (``handshake()``); the caller verifies the peer (``peercert``) and only then
attaches the real protocol (``attach``), so no application byte moves before secure naming holds.
Plaintext that arrives before ``attach`` is held, not dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any, Final, cast

JOIN_LIMIT: Final = 16 * 1024  # a TLS record's plaintext limit: joined chunks still fit one record
RECORD: Final = 16 * 1024  # what one SSLObject.read returns at most (one record's plaintext)
# How much crosses a memory BIO at once, both ways. A MemoryBIO keeps the largest buffer it ever
# held until the connection closes (OpenSSL's BUF_MEM grows and never shrinks), and pooled
# connections between sidecars live for minutes: fed 256 KiB at a time, every connection that once
# carried a long body kept ~350 KiB in a BIO, and each bulk phase left the sidecar a few MB
# larger. With this bound a BIO stays near 85 KiB. Raw reads are this size too (a BufferedProtocol
# into one buffer per process: no bytes object per read), and decrypted records are handed on
# joined, up to this much per data_received (fewer calls up the stack than one per record).
SLICE: Final = 64 * 1024
_RAW_BUF: Final = memoryview(bytearray(SLICE))  # each read is fed to a BIO before the next
_PLAIN_BUF: Final = memoryview(bytearray(SLICE))  # filled and copied out within one _read


def _closed_sslobject() -> ssl.SSLObject:
    """A never-handshaken SSLObject on a throwaway context (one per process): what ``sslobj``
    becomes once an attached connection is gone, so the attribute keeps its type."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=False, server_hostname="closed.invalid")


_CLOSED: Final = _closed_sslobject()


class TlsStream(asyncio.BufferedProtocol):
    def __init__(self, ctx: ssl.SSLContext, server_side: bool, session: ssl.SSLSession | None = None) -> None:
        """``session``: a client's session (made with ``ctx``) to offer for resumption."""
        self.ctx = ctx
        self.server_side = server_side
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side, session=session)
        # Who wants this client connection's resumable session (see want_ticket), and the id of
        # the session offered: a resumed connection's session is that one until the server's
        # fresh ticket arrives, and only the fresh one is handed on.
        self.on_ticket: Callable[[ssl.SSLSession], None] | None = None
        self.offered_id = session.id if session is not None else b""
        self.raw: asyncio.Transport | None = None
        self.app: asyncio.Protocol | None = None
        self.handshaken = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held: list[bytes] = []
        self.held_eof = False
        self.eof_in = False  # the peer's write side is done (close_notify or FIN)
        self.eof_out = False  # ours is (close_notify sent)
        self.lost = False
        self.answered = False  # a handshake message of ours went out (a server: the ClientHello was answered)

    # -- towards the raw transport (asyncio.Protocol) ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        if not self.server_side:
            self._step_handshake()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RAW_BUF

    def buffer_updated(self, nbytes: int) -> None:
        self.incoming.write(_RAW_BUF[:nbytes])
        self._received()

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from a transport that does not read into get_buffer (tests, other loops)."""
        view = memoryview(data)
        for start in range(0, len(view), SLICE):
            self.incoming.write(view[start:start + SLICE])
            self._received()

    def _received(self) -> None:
        if not self.handshaken:
            self._step_handshake()
            if not self.handshaken:
                return
        self._read()

    def eof_received(self) -> bool:
        # A FIN without close_notify: the peer is gone for writing all the same. (A truncation
        # is reported to the app as an EOF; the relay's peers decide what it means.)
        if not self.handshaken:
            self._fail(ConnectionResetError("connection closed during the TLS handshake"))
            return False
        self._read()
        self._end_of_input()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("connection closed during the TLS handshake"))
        app = self.app
        try:
            if app is not None:
                app.connection_lost(exc)
        finally:
            if app is not None:
                # A closed connection's objects (this stream, the relay or pipe above it, their
                # transports) refer to each other, so only the cyclic collector frees them, and it
                # counts Python objects: it cannot see the ~30-40 KB of OpenSSL state behind the
                # SSLObject, which would wait for it (forever once the sidecar is idle). Free it
                # now. Nothing reads it any more: the peer was verified before attach, and the
                # write paths stop at raw.is_closing(). (Before attach, whoever awaits the
                # handshake still holds the stream and may read peercert; no cycle keeps it then.)
                self.sslobj = _CLOSED

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # -- handshake and decryption ---------------------------------------------------------

    def _step_handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.answered = self.answered or self.outgoing.pending > 0
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()  # the alert, so the peer learns why
            self._fail(exc)
            return
        self.handshaken = True
        self._flush()
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.raw is not None:
            self.raw.abort()

    def _read(self) -> None:
        more = True
        while more and not self.eof_in:
            more = self._decrypt_some()
        if self.on_ticket is not None:
            self._take_ticket()
        if self.outgoing.pending:
            self._flush()  # e.g. a key update answer

    def _decrypt_some(self) -> bool:
        """Decrypt records into one buffer, up to SLICE bytes, and hand them on together; True
        if more may be waiting."""
        buf, sslobj, incoming = _PLAIN_BUF, self.sslobj, self.incoming
        filled = 0
        more = False
        try:
            while filled <= SLICE - RECORD:
                n = cast(int, sslobj.read(RECORD, buf[filled:]))  # (a buffer given: a count)
                if not n:
                    break
                filled += n
                # Nothing left to decrypt: every byte fed was consumed and no plaintext is
                # buffered, so another read could only raise SSLWantReadError (an exception per
                # record costs more than this test). A partial record left in OpenSSL's own
                # buffer needs more bytes all the same; a close_notify still in the BIO keeps
                # pending > 0.
                if not incoming.pending and not sslobj.pending():
                    break
            else:
                more = True  # the buffer is full
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:  # close_notify: the peer's write side is done
            self._deliver(filled)
            self._end_of_input()
            return False
        except ssl.SSLError:
            self._deliver(filled)
            if self.raw is not None:
                self.raw.abort()
            return False
        self._deliver(filled)
        return more and not self.lost

    def _deliver(self, filled: int) -> None:
        if not filled:
            return
        chunk = bytes(_PLAIN_BUF[:filled])
        if self.app is not None:
            self.app.data_received(chunk)
        else:
            self.held.append(chunk)

    def _end_of_input(self) -> None:
        if self.eof_in:
            return
        self.eof_in = True
        if self.app is None:
            self.held_eof = True
        elif not self.app.eof_received():
            self.close()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and self.raw is not None and not self.raw.is_closing():
            self.raw.write(data)

    async def handshake(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.done)
        except TimeoutError:
            # The abort settles ``done`` with a reset nobody awaits any more: mark it retrieved,
            # or asyncio logs "Future exception was never retrieved" for every timed-out peer.
            self.done.add_done_callback(_retrieved)
            if self.raw is not None:
                self.raw.abort()
            raise

    @property
    def peercert(self) -> Any:
        return self.sslobj.getpeercert()

    @property
    def resumed(self) -> bool:
        """The handshake resumed a session: the peer's chain was not verified again."""
        return self.sslobj.session_reused

    def want_ticket(self, take: Callable[[ssl.SSLSession], None]) -> None:
        """Hand this client connection's session to ``take`` once it can be resumed. A TLS 1.3
        server sends its ticket after the handshake, so it is decrypted with the first bytes read
        after it (it may already have been). On a resumed connection that is a fresh ticket (a
        new session, with its own id and lifetime): each ticket then serves the connections
        dialled before the next one arrives, not every connection for its whole lifetime, as
        RFC 8446 (C.4) advises, and a busy peer's session never ages out."""
        self.on_ticket = take
        self._take_ticket()

    def _take_ticket(self) -> None:
        session = self.sslobj.session
        if (session is not None and session.has_ticket and session.id != self.offered_id
                and self.on_ticket is not None):
            take, self.on_ticket = self.on_ticket, None
            take(session)

    def attach(self, app: asyncio.Protocol) -> None:
        """The verified connection's real protocol; held bytes and EOF are delivered now."""
        self.app = app
        app.connection_made(self)  # type: ignore[arg-type]  # duck-typed transport
        # connection_made may have handed the connection to another protocol (set_protocol).
        held, self.held = self.held, []
        for chunk in held:
            if self.app is not None:
                self.app.data_received(chunk)
        if self.held_eof and self.app is not None:
            self.held_eof = False
            if not self.app.eof_received():
                self.close()

    # -- towards the app protocol (an asyncio.Transport, duck-typed) -------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_out or self.raw is None or self.raw.is_closing():
            return
        if len(data) <= SLICE:
            self.sslobj.write(data)
            self._flush()
        else:
            self._write_sliced(data)

    def writelines(self, chunks: Any) -> None:
        if self.eof_out or self.raw is None or self.raw.is_closing():
            return
        chunks = list(chunks)
        if len(chunks) > 1 and sum(map(len, chunks)) <= JOIN_LIMIT:
            # One TLS record instead of one per chunk (a response head and its small body):
            # less framing and encryption here, one record to decrypt at the peer.
            self.sslobj.write(b"".join(chunks))
            self._flush()
            return
        for chunk in chunks:
            if len(chunk) > SLICE:
                self._write_sliced(chunk)
            else:
                if self.outgoing.pending + len(chunk) > SLICE:
                    self._flush()  # the BIO holds a slice at most (see SLICE)
                self.sslobj.write(chunk)
        self._flush()

    def _write_sliced(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` SLICE bytes at a time and take each out of the BIO at once (the
        BIO's buffer stays small, see SLICE); the pieces go to the socket in one writelines."""
        view = memoryview(data)
        sslobj, outgoing = self.sslobj, self.outgoing
        pending = self.outgoing.read() if self.outgoing.pending else b""
        pieces = [pending] if pending else []
        for start in range(0, len(view), SLICE):
            sslobj.write(view[start:start + SLICE])
            pieces.append(outgoing.read())
        raw = self.raw
        if raw is not None and not raw.is_closing():
            raw.writelines(pieces)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Half-close: close_notify, then FIN; reading goes on."""
        if self.eof_out or self.raw is None or self.raw.is_closing():
            return
        self.eof_out = True
        self._close_notify()
        if self.raw.can_write_eof():
            self.raw.write_eof()

    def close(self) -> None:
        if self.raw is None or self.raw.is_closing():
            return
        if not self.eof_out and self.handshaken:
            self.eof_out = True
            self._close_notify()
        self.raw.close()

    def _close_notify(self) -> None:
        # unwrap() queues close_notify, then wants the peer's, which comes later or never.
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError, ValueError):
            self.sslobj.unwrap()
        self._flush()

    def abort(self) -> None:
        if self.raw is not None:
            self.raw.abort()

    def is_closing(self) -> bool:
        return self.raw is None or self.raw.is_closing()

    def pause_reading(self) -> None:
        if self.raw is not None and not self.raw.is_closing():
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.raw is not None and not self.raw.is_closing():
            self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw is not None and self.raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() if self.raw is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.raw is not None:
            self.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            return self.sslobj.getpeercert()
        if name == "ssl_object":
            return self.sslobj
        return self.raw.get_extra_info(name, default) if self.raw is not None else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.app = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.app


def _retrieved(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
