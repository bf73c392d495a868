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
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.identity import MeshTls
from meshns.dataplane.origdst import OrigDstError, OriginalDstResolver
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.stats import Stats
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


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


class _Gate(asyncio.Protocol):
    """Checks the verified client's identity against the revocation list before the relay starts."""

    def __init__(self, acceptor: InboundAcceptor, dst: OrigDst, source: str) -> None:
        self.acceptor = acceptor
        self.dst = dst
        self.source = source

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        a = self.acceptor
        revoked = a.store.current.snapshot.security.revoked
        try:
            peer = verify_peer(transport.get_extra_info("peercert"), revoked=revoked)
        except PeerRejected as exc:
            a.stats.tls_in_rejected += 1
            log.warning("mTLS client %s refused: %s", self.source, exc.reason)
            cast(asyncio.Transport, transport).abort()
            return
        a.stats.tls_in += 1
        inner = a.factory(peer, self.dst)
        transport.set_protocol(inner)
        inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


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
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            assert self._loop is not None
            self._loop.add_reader(conn.fileno(), self._readable, conn)
            self._waiting[conn] = self._loop.call_later(self.peek_timeout_s, self._silent, conn)
            return
        except OSError:
            conn.close()
            return
        self._classify(conn, first)

    def _readable(self, conn: socket.socket) -> None:
        self._unwait(conn)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            first = None
        except OSError:
            conn.close()
            return
        self._classify(conn, first)

    def _silent(self, conn: socket.socket) -> None:
        self._unwait(conn)
        self._classify(conn, None)

    def _unwait(self, conn: socket.socket) -> None:
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
        assert self._loop is not None
        self._loop.remove_reader(conn.fileno())

    def _classify(self, conn: socket.socket, first: bytes | None) -> None:
        try:
            dst = self.resolver.resolve(conn)
        except OrigDstError as exc:
            self.stats.resolve_failures += 1
            log.warning("cannot recover original destination of %s: %s", _peer(conn), exc)
            conn.close()
            return
        hello = bool(first) and first is not None and first[0] == TLS_HANDSHAKE
        mode = self.store.current.snapshot.security.peer_authn.mode_for(dst.port)
        if dst.port == self.probe_port:
            mode = "DISABLE"
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
            await self._loop.connect_accepted_socket(
                lambda: _Gate(self, dst, source), conn, ssl=ctx, ssl_handshake_timeout=self.handshake_timeout_s)
        except (OSError, TimeoutError, ConnectionError) as exc:  # ssl.SSLError is an OSError
            self.stats.tls_handshake_failures += 1
            log.warning("mTLS handshake with %s failed: %s", source, handshake_failure(exc))
            conn.close()
