"""The inbound listener with mTLS: accept, peek at the first bytes, then TLS or plaintext.

Envoy does this with its ``tls_inspector`` listener filter: it looks at the first bytes with
MSG_PEEK, so nothing is consumed and the TLS stack (or the plaintext path) sees the stream from
its first byte. A meshed client's sidecar sends its ClientHello at once; a plaintext client that
stays silent (a server-first protocol) is served as plaintext after ``inbound_peek_timeout_s``,
so it never stalls for good.

Per connection, from the original destination port and the pod's PeerAuthentication:
    TLS ClientHello, mode STRICT/PERMISSIVE -> mTLS handshake, peer verified, then the relay
    TLS ClientHello, mode DISABLE           -> passed through untouched as plaintext
    plaintext,       mode PERMISSIVE/DISABLE -> the relay, peer unauthenticated
    plaintext,       mode STRICT             -> closed (counted and logged)
The validation probe port is always plaintext: the init step's probes come from the host.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.identity import MeshTls
from meshns.dataplane.origdst import OrigDstError, OriginalDstResolver
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.stats import Stats
from meshns.dataplane.tls_transport import TlsStream
from meshns.mtls.tls import PeerRejected, verify_peer

log = logging.getLogger("meshns.dataplane.accept")

TLS_HANDSHAKE: Final = 0x16  # the first byte of every TLS record carrying a ClientHello
ACCEPT_BATCH: Final = 64

# Makes the protocol for an accepted connection: (peer SPIFFE ID or "", original destination).
InboundFactory = Callable[[str, OrigDst], asyncio.Protocol]


def handshake_failure(exc: BaseException) -> str:
    """Why a handshake failed, for the log: the verify message says *which* check failed."""
    detail = getattr(exc, "verify_message", None)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason}: {detail}" if detail else str(exc.reason)
    return str(exc) or type(exc).__name__


def gave_up(exc: BaseException, answered: bool) -> bool:
    """The client closed the connection after the server had answered its ClientHello and
    before it finished, with no alert: most often it gave up (its sidecar dropped a dial the
    request no longer needed, or the client was stopped). A client that refused our certificate
    and closed without saying why (asyncio's TLS does that) looks the same from here; its own
    side knows. A close before the answer (a truncated ClientHello), a stall, a TLS error (a
    missing, foreign or expired certificate, garbage, an alert) are failures."""
    return answered and isinstance(exc, ConnectionError) and not isinstance(exc, ssl.SSLError)


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


class InboundAcceptor:
    def __init__(self, sock: socket.socket, factory: InboundFactory, resolver: OriginalDstResolver,
                 tls: MeshTls, store: SnapshotStore, stats: Stats, *, probe_port: int,
                 peek_timeout_s: float, handshake_timeout_s: float) -> None:
        self.sock = sock
        self.factory = factory
        self.resolver = resolver
        self.tls = tls
        self.store = store
        self.stats = stats
        self.probe_port = probe_port
        self.peek_timeout_s = peek_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self._waiting: dict[socket.socket, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_accept)

    def close(self) -> None:
        """Stop accepting; connections still being peeked at are closed (never half-served)."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            for conn, timer in list(self._waiting.items()):
                timer.cancel()
                self._loop.remove_reader(conn.fileno())
                conn.close()
            self._waiting.clear()
        self.sock.close()

    def _on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the backlog keeps the rest for later
                log.warning("inbound accept failed: %s", exc)
                return
            conn.setblocking(False)
            self._peek(conn)

    def _peek(self, conn: socket.socket) -> None:
        try:
            dst = self.resolver.resolve(conn)
        except OrigDstError as exc:
            self.stats.resolve_failures += 1
            log.warning("cannot recover original destination of %s: %s", _peer(conn), exc)
            conn.close()
            return
        if self._mode(dst) == "DISABLE":
            # Nothing to choose: no wait for a silent client (the init step's probes are one).
            self._spawn(self._plain(conn, dst))
            return
        try:
            first = self._first_byte(conn)
        except OSError:
            conn.close()
            return
        if first is None:
            assert self._loop is not None
            self._loop.add_reader(conn.fileno(), self._readable, conn, dst)
            self._waiting[conn] = self._loop.call_later(self.peek_timeout_s, self._silent, conn, dst)
            return
        self._classify(conn, dst, first)

    @staticmethod
    def _first_byte(conn: socket.socket) -> bytes | None:
        """The first byte without consuming it; b"" at EOF, None if nothing came yet."""
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None

    def _readable(self, conn: socket.socket, dst: OrigDst) -> None:
        self._unwait(conn)
        try:
            first = self._first_byte(conn)
        except OSError:
            conn.close()
            return
        self._classify(conn, dst, first)

    def _silent(self, conn: socket.socket, dst: OrigDst) -> None:
        self._unwait(conn)
        self._classify(conn, dst, None)

    def _unwait(self, conn: socket.socket) -> None:
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
        assert self._loop is not None
        self._loop.remove_reader(conn.fileno())

    def _mode(self, dst: OrigDst) -> str:
        if dst.port == self.probe_port:
            return "DISABLE"
        return self.store.current.snapshot.security.peer_authn.mode_for(dst.port)

    def _classify(self, conn: socket.socket, dst: OrigDst, first: bytes | None) -> None:
        hello = bool(first) and first is not None and first[0] == TLS_HANDSHAKE
        mode = self._mode(dst)
        ctx = self.tls.server_ctx
        if hello and mode != "DISABLE" and ctx is not None:
            self._spawn(self._terminate(conn, dst, ctx))
        elif not hello and mode == "STRICT":
            self.stats.plaintext_refused += 1
            log.warning("plaintext connection %s -> port %d refused: mTLS mode STRICT", _peer(conn), dst.port)
            conn.close()
        else:
            self._spawn(self._plain(conn, dst))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _plain(self, conn: socket.socket, dst: OrigDst) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: self.factory("", dst), conn)
        except OSError as exc:
            log.info("inbound connection %s lost at accept: %s", _peer(conn), exc)
            conn.close()

    async def _terminate(self, conn: socket.socket, dst: OrigDst, ctx: ssl.SSLContext) -> None:
        assert self._loop is not None
        source = _peer(conn)
        try:
            _, stream = await self._loop.connect_accepted_socket(lambda: TlsStream(ctx, server_side=True), conn)
        except OSError as exc:
            log.info("inbound connection %s lost at accept: %s", source, exc)
            conn.close()
            return
        try:
            await stream.handshake(self.handshake_timeout_s)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            if gave_up(exc, stream.answered):  # counted and noted, not a warning (see gave_up)
                self.stats.tls_handshake_abandoned += 1
                log.info("mTLS client %s closed mid-handshake, after our answer and with no alert", source)
            else:
                # Garbage after 0x16, a truncated ClientHello (then a close, or silence until
                # the timeout), no or a foreign certificate: counted, logged, reset.
                self.stats.tls_handshake_failures += 1
                log.warning("mTLS handshake with %s failed: %s", source, handshake_failure(exc))
            stream.abort()
            return
        resumed = stream.resumed  # a resumed client's chain was not verified again: check its period
        try:
            peer = verify_peer(stream.peercert, revoked=self.store.current.snapshot.security.revoked,
                               valid_at=time.time() if resumed else None)
        except PeerRejected as exc:
            self.stats.tls_in_rejected += 1
            log.warning("mTLS client %s refused: %s", source, exc.reason)
            stream.abort()
            return
        self.stats.tls_in += 1
        if resumed:
            self.stats.tls_in_resumed += 1
        stream.attach(self.factory(peer, dst))
