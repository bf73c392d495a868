"""Upstream HTTP/2: multiplexed connections to one endpoint, and the pool that shares them.

An ``Upstream`` carries many streams at once, up to the smaller of the server's
SETTINGS_MAX_CONCURRENT_STREAMS and ours (``MAX_CONCURRENT_STREAMS``). Each stream has a user
(``StreamUser``: the request handler that opened it) that gets the response events. A GOAWAY
from the server stops new streams on that connection; streams above its last-stream-id were
never processed and are failed as refused (safe to retry anywhere), the others finish.

``H2Pool`` holds the connections of one destination set (a service, or the pod's app): a stream
goes on the connection to its endpoint with room; when none has room, one is dialled, and callers
arriving during that dial wait for it rather than dial their own. A connection with no stream
for ``idle_timeout_s`` is closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Protocol

import h2.events
import h2.exceptions

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.connect import Connector
from meshns.dataplane.decide import Forward
from meshns.dataplane.http2.conn import CANCEL, MAX_CONCURRENT_STREAMS, NO_ERROR, REFUSED_STREAM, H2Conn, Headers

log = logging.getLogger("meshns.dataplane.http2")

Key = tuple[str, int]


class ConnectFailed(Exception):
    pass


class StreamUser(Protocol):
    def up_headers(self, headers: Headers, ended: bool) -> None: ...

    def up_data(self, data: bytes, fc_len: int) -> None: ...

    def up_trailers(self, headers: Headers) -> None: ...

    def up_end(self) -> None: ...

    def up_reset(self, code: int, refused: bool, protocol_error: bool = False) -> None:
        """The stream ended without its response: reset by the upstream (``refused``: never
        processed), or the connection was lost; ``protocol_error``: lost because the upstream
        broke HTTP/2 (Envoy's 502 UPE, not 503 UC)."""


class Upstream(H2Conn):
    def __init__(self, pool: H2Pool, key: Key) -> None:
        super().__init__(client_side=True)
        self.pool = pool
        self.key = key
        self.users: dict[int, StreamUser] = {}
        self.goaway_seen = False
        self.lost = False
        self.broke = False  # the upstream broke HTTP/2: its streams end as protocol errors
        self.idle_handle: asyncio.TimerHandle | None = None

    def capacity(self) -> int:
        if self.closed or self.lost or self.goaway_seen or self.transport.is_closing():
            return 0
        peer_max = self.h2.remote_settings.max_concurrent_streams
        return min(peer_max, MAX_CONCURRENT_STREAMS) - len(self.users)

    def open(self, headers: Headers, end: bool, user: StreamUser) -> int:
        """A new stream with ``headers``; raises ConnectionError if the connection cannot take it."""
        try:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, headers, end_stream=end)
        except (h2.exceptions.ProtocolError, h2.exceptions.NoAvailableStreamIDError) as exc:
            self.goaway_seen = True  # unusable for new streams
            raise ConnectionResetError(f"cannot open a stream: {exc}") from None
        self.users[sid] = user
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.flush()
        return sid

    def release(self, sid: int, cancel: bool) -> None:
        """The user is done with stream ``sid`` (``cancel``: reset it, the response is unwanted)."""
        if self.users.pop(sid, None) is None:
            return
        if cancel:
            self.reset(sid, CANCEL)
        self.pool.stream_ended(self)

    # -- events -------------------------------------------------------------------------------

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            user = self.users.get(event.stream_id)
            if user is not None:
                user.up_headers(list(event.headers), event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            user = self.users.get(event.stream_id)
            if user is not None:
                user.up_data(event.data, event.flow_controlled_length)
            elif event.flow_controlled_length:
                self.ack(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            user = self.users.get(event.stream_id)
            if user is not None:
                user.up_trailers(list(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            user = self.users.pop(event.stream_id, None)
            if user is not None:
                user.up_end()
                self.pool.stream_ended(self)
            if self.goaway_seen and not self.users:
                self.shut()
        elif isinstance(event, h2.events.StreamReset):
            self.drop_outbox(event.stream_id)
            user = self.users.pop(event.stream_id, None)
            if user is not None:
                user.up_reset(event.error_code, event.error_code == REFUSED_STREAM)
                self.pool.stream_ended(self)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_seen = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid in [s for s in self.users if s > last]:
                self.drop_outbox(sid)
                self.users.pop(sid).up_reset(REFUSED_STREAM, True)  # never processed: retry anywhere
            if event.error_code == NO_ERROR and self.users:
                self.keep_streams_after_goaway()  # the server is draining: its streams finish
                return
            for sid in list(self.users):
                self.drop_outbox(sid)
                self.users.pop(sid).up_reset(event.error_code or CANCEL, False)
            self.shut()
        # Informational (1xx) responses, pushes (refused in our SETTINGS), PINGs: h2 handles them.

    def protocol_failed(self, why: str) -> None:
        self.broke = True
        log.info("HTTP/2 upstream %s:%d closed: %s", self.key[0], self.key[1], why)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        users, self.users = self.users, {}
        for user in users.values():
            user.up_reset(CANCEL, False, self.broke)
        self.drop_all_outboxes()
        self.pool.conn_lost(self)


class H2Pool:
    """The HTTP/2 connections of one destination set, per endpoint."""

    def __init__(self, connector: Connector, connect_timeout_s: float, idle_timeout_s: float,
                 bind_source: str | None = None) -> None:
        self.connector = connector
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.bind_source = bind_source
        self.conns: dict[Key, list[Upstream]] = {}
        self.dialing: dict[Key, asyncio.Future[Upstream]] = {}

    async def acquire(self, key: Key) -> Upstream:
        """A connection to ``key`` with room for one more stream; ConnectFailed when none can be had."""
        while True:
            for conn in self.conns.get(key, ()):
                if conn.capacity() > 0:
                    return conn
            fut = self.dialing.get(key)
            if fut is None:
                fut = asyncio.ensure_future(self._dial(key))
                self.dialing[key] = fut
                fut.add_done_callback(functools.partial(self._dialed, key))
            try:
                conn = await asyncio.shield(fut)
            except (OSError, TimeoutError) as exc:
                raise ConnectFailed(f"{key[0]}:{key[1]}: {exc!r}") from None
            if conn.capacity() > 0:
                return conn
            # Filled by the callers who waited with us: dial another.

    async def _dial(self, key: Key) -> Upstream:
        made: list[Upstream] = []

        def factory() -> Upstream:
            conn = Upstream(self, key)
            made.append(conn)
            return conn

        async with asyncio.timeout(self.connect_timeout_s):
            await self.connector(factory, Forward(OrigDst(*key), self.bind_source, h2=True))
        conn = made[-1]
        self.conns.setdefault(key, []).append(conn)
        return conn

    def _dialed(self, key: Key, fut: asyncio.Future[Upstream]) -> None:
        if self.dialing.get(key) is fut:
            del self.dialing[key]
        if not fut.cancelled():
            fut.exception()  # retrieved here: a failed dial nobody awaits is not an error to log

    def stream_ended(self, conn: Upstream) -> None:
        if not conn.users and not conn.closed and conn.idle_handle is None:
            conn.idle_handle = asyncio.get_running_loop().call_later(self.idle_timeout_s, self._idle, conn)

    def _idle(self, conn: Upstream) -> None:
        conn.idle_handle = None
        if not conn.users:
            conn.goaway(0)

    def conn_lost(self, conn: Upstream) -> None:
        lst = self.conns.get(conn.key)
        if lst is not None and conn in lst:
            lst.remove(conn)
            if not lst:
                del self.conns[conn.key]

    def connection_count(self) -> int:
        return sum(len(v) for v in self.conns.values())

    def close_all(self) -> None:
        for lst in list(self.conns.values()):
            for conn in list(lst):
                conn.goaway(0)
