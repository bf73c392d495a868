"""Upstream HTTP/1.1 connections and the keep-alive pool of one service.

Theory of operation. ``UpstreamConn`` is the protocol of one dialled connection; its bytes go to
its current ``user`` (the request flow it serves, or the connection detector before a protocol is
known), and nowhere when idle: an idle connection that receives bytes or a FIN is unusable and
closed. ``ServicePool`` keeps the idle connections per endpoint (last in, first out, so the warm
ones are reused and the cold ones age out after ``pool.idle_timeout_s``) and enforces the
service's circuit breaker: opening a connection takes a slot of ``max_connections``; a request that
finds no idle connection and no free slot waits as "pending" (up to ``max_pending_requests``,
beyond that it overflows). A slot is given back exactly once per connection (``_drop``), when it
is closed for any reason; that wakes one waiter. A waiter for endpoint A whose slots are all held
by idle connections to endpoint B would wait for B's idle timeout, so an idle connection elsewhere
is closed to make room.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Final, Protocol, cast

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.connect import Connector
from meshns.dataplane.decide import Forward
from meshns.dataplane.http1.parser import ResponseParser
from meshns.dataplane.policy.state import ServiceState

HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
# Reads from a plain upstream socket go into one buffer per process (each read is handed on
# before the next, as bytes). The first read of a response takes at most HEAD_READ bytes: a long
# body then stays mostly in the socket, where splice(2) moves it without Python (dataplane.splice);
# uvloop's own reads would take up to 256 KiB of it first. Later reads take the whole buffer.
READ_BYTES: Final = 256 * 1024
HEAD_READ: Final = 64 * 1024
_READ_BUF: Final = memoryview(bytearray(READ_BYTES))
_HEAD_BUF: Final = _READ_BUF[:HEAD_READ]

log = logging.getLogger("meshns.dataplane.http1.upstream")

Key = tuple[str, int]


class ConnectFailed(Exception):
    pass


class PoolOverflow(Exception):
    pass


class UpstreamUser(Protocol):
    def up_data(self, conn: UpstreamConn, data: bytes) -> None: ...

    def up_eof(self, conn: UpstreamConn) -> None: ...

    def up_lost(self, conn: UpstreamConn, exc: Exception | None) -> None: ...

    def up_pause(self) -> None: ...

    def up_resume(self) -> None: ...


class ConnDropper(Protocol):
    def drop(self, conn: UpstreamConn) -> None: ...


class UpstreamConn(asyncio.BufferedProtocol):
    """A buffered protocol to uvloop, which reads into ``get_buffer``'s buffer (``buffer_updated``);
    a plain one to a TLS stream on the socket, which calls ``data_received`` with the plaintext."""

    __slots__ = ("counted", "head_next", "idle_deadline", "idle_handle", "key", "lost", "parser", "pool", "requests",
                 "transport", "user", "write_paused")

    transport: asyncio.Transport

    def __init__(self, pool: ConnDropper, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.user: UpstreamUser | None = None
        self.requests = 0  # requests served; > 0 means a reused keep-alive connection
        # The idle-timeout timer outlives a take from the pool (see ServicePool.release); the
        # deadline it checks is the last release's.
        self.idle_handle: asyncio.TimerHandle | None = None
        self.idle_deadline = 0.0
        self.counted = True  # holds a breaker connection slot
        self.lost = False
        self.write_paused = False
        self.parser: ResponseParser | None = None  # the last exchange's, for the next to re-arm
        self.head_next = False  # the next read starts a response (set by the exchange's attach)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _HEAD_BUF if self.head_next else _READ_BUF

    def buffer_updated(self, nbytes: int) -> None:
        self.head_next = False
        self.data_received(bytes(_READ_BUF[:nbytes]))

    def data_received(self, data: bytes) -> None:
        user = self.user
        if user is None:
            self.transport.abort()  # bytes on an idle connection: the exchange state is unknown
            return
        user.up_data(self, data)

    def eof_received(self) -> bool:
        user = self.user
        if user is not None:
            user.up_eof(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.drop(self)
        user = self.user
        if user is not None:
            self.user = None
            user.up_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.user is not None:
            self.user.up_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.user is not None:
            self.user.up_resume()

    def usable(self) -> bool:
        return not self.lost and not self.transport.is_closing()


def as_protocol(conn: UpstreamConn) -> asyncio.Protocol:
    """What a ``Connector`` factory returns: a buffered protocol to uvloop, and to a TLS stream
    (which calls ``data_received`` with the plaintext) a plain one."""
    return cast(asyncio.Protocol, conn)


def idle_left_s(deadline: float, now: float) -> float:
    """Seconds an idle pooled connection may still wait; <= 0: close it now."""
    return deadline - now


class ServicePool:
    """Idle connections per endpoint and the waiters of one service."""

    def __init__(self, state: ServiceState, connector: Connector) -> None:
        self.state = state
        self.connector = connector
        self.loop: asyncio.AbstractEventLoop | None = None
        self.idle: dict[Key, list[UpstreamConn]] = {}
        self.waiters: collections.deque[tuple[Key, asyncio.Future[UpstreamConn | None]]] = (
            collections.deque())

    async def connect(self, key: Key, user: UpstreamUser | None = None) -> UpstreamConn:
        """Dial a new connection (the caller has taken a breaker slot); ConnectFailed on failure.
        ``user`` gets the bytes from the first moment (a server-first peer may speak at once)."""
        timeout_s = self.state.service.pool.connect_timeout_s
        made: list[UpstreamConn] = []

        def factory() -> asyncio.Protocol:
            conn = UpstreamConn(self, key)
            conn.user = user
            made.append(conn)
            return as_protocol(conn)

        try:
            async with asyncio.timeout(timeout_s):
                await self.connector(factory, Forward(OrigDst(*key), None))
        except (OSError, TimeoutError) as exc:
            self._release_slot()
            raise ConnectFailed(f"{key[0]}:{key[1]}: {exc!r}") from None
        except BaseException:
            self._release_slot()
            raise
        return made[-1]

    async def acquire(self, key: Key) -> UpstreamConn:
        breaker = self.state.breaker
        while True:
            conn = self.take_idle(key)
            if conn is not None:
                return conn
            if not breaker.can_open_connection():
                self._close_idle_elsewhere(key)
            if breaker.can_open_connection():
                breaker.connection_opened()
                return await self.connect(key)
            if not breaker.try_add_pending():
                raise PoolOverflow
            fut: asyncio.Future[UpstreamConn | None] = asyncio.get_running_loop().create_future()
            entry = (key, fut)
            self.waiters.append(entry)
            try:
                got = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and (given := fut.result()) is not None:
                    self.release(given, True)  # handed to us just as we were cancelled
                raise
            finally:
                breaker.remove_pending()
                self._discard_waiter(entry)
            if got is not None:
                return got

    def _discard_waiter(self, entry: tuple[Key, asyncio.Future[UpstreamConn | None]]) -> None:
        if entry in self.waiters:
            self.waiters.remove(entry)

    def has_idle(self, key: Key) -> bool:
        """An idle connection to ``key`` is there to take (what take_idle would find)."""
        return any(conn.usable() for conn in self.idle.get(key, ()))

    def take_idle(self, key: Key) -> UpstreamConn | None:
        lst = self.idle.get(key)
        while lst:
            conn = lst.pop()
            # Its idle timer stays armed: cancelling and re-arming one per request cost ~3% of
            # the client sidecar's CPU; _idle_check ignores a connection that is in use.
            if conn.usable():
                return conn
        return None

    def _close_idle_elsewhere(self, key: Key) -> None:
        for other, lst in self.idle.items():
            if other != key and lst:
                conn = lst.pop(0)  # the coldest
                self.close(conn)
                return

    def release(self, conn: UpstreamConn, reusable: bool) -> None:
        """A flow is done with ``conn``: keep it for the next request or close it."""
        conn.user = None
        limit = self.state.service.pool.max_requests_per_connection
        if not reusable or not conn.usable() or (limit and conn.requests >= limit):
            self.close(conn)
            return
        if conn.write_paused:
            conn.resume_writing()
        conn.transport.resume_reading()
        for entry in self.waiters:
            k, fut = entry
            if k == conn.key and not fut.done():
                self.waiters.remove(entry)
                fut.set_result(conn)
                return
        if self.state.breaker.connections > self.state.service.pool.max_connections:
            # Eager dials are counted but never refused (a server-first client must not wait on
            # the breaker), so a burst of clients can leave more connections than the pool may
            # hold: over the ceiling, a connection nobody waits for is closed, not parked.
            self.close(conn)
            return
        self.idle.setdefault(conn.key, []).append(conn)
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()  # once: it costs a getpid() each time
        timeout = self.state.service.pool.idle_timeout_s
        deadline = conn.idle_deadline = loop.time() + timeout
        handle = conn.idle_handle
        # One timer per connection per idle period, not one per request: a timer still armed from
        # an earlier release is kept unless it would fire after this deadline (a reload shortened
        # the timeout); when it fires early, _idle_check re-arms it for the rest.
        if handle is not None:
            if handle.when() <= deadline:
                return
            handle.cancel()
        conn.idle_handle = loop.call_later(timeout, self._idle_check, conn)

    def _idle_check(self, conn: UpstreamConn) -> None:
        conn.idle_handle = None
        lst = self.idle.get(conn.key)
        if not lst or conn not in lst:
            return  # in use (its next release arms a timer again) or already gone
        loop = self.loop
        assert loop is not None, "armed by release, which sets it"
        left = idle_left_s(conn.idle_deadline, loop.time())
        if left > 0:
            conn.idle_handle = loop.call_later(left, self._idle_check, conn)
            return
        lst.remove(conn)
        self.close(conn)

    def close(self, conn: UpstreamConn, abort: bool = False) -> None:
        conn.user = None
        if abort:
            conn.transport.abort()
        else:
            conn.transport.close()
        self.drop(conn)

    def drop(self, conn: UpstreamConn) -> None:
        """Give the connection's breaker slot back (once) and let a waiter try again."""
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()
            conn.idle_handle = None
        lst = self.idle.get(conn.key)
        if lst and conn in lst:
            lst.remove(conn)
        if conn.counted:
            conn.counted = False
            self._release_slot()

    def _release_slot(self) -> None:
        self.state.breaker.connection_closed()
        while self.waiters:
            _, fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def idle_count(self) -> int:
        return sum(len(v) for v in self.idle.values())
