"""The client-facing HTTP/2 connection: one stream handler per request, and the flood guard.

A ``Downstream`` is an HTTP/2 server endpoint towards whoever connected (the pod's app calling a
service, or a client sidecar reaching this pod). Every request stream gets a handler from the
``make_stream`` factory (outbound: ``outbound.OutboundStream``; inbound: ``inbound.InboundStream``)
which routes it, dials, and answers through ``respond`` / ``send_body`` / ``send_end`` / ``reset``.

Protection (CVE-2023-44487 and friends): at most ``MAX_CONCURRENT_STREAMS`` open streams (h2
refuses more), a 64 KiB header list (h2 answers a larger one with GOAWAY ENHANCE_YOUR_CALM), and
the ``FloodGuard``: streams reset by the client before their response ended, SETTINGS and PING
frames, and stream churn are counted per second; past a limit the connection gets GOAWAY
ENHANCE_YOUR_CALM and is closed. Other connections are not affected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import h2.events
from hyperframe.frame import GoAwayFrame

from meshns.dataplane.http2.conn import CANCEL, ENHANCE_YOUR_CALM, NO_ERROR, REFUSED_STREAM, H2Conn, Headers
from meshns.dataplane.http2.guard import FloodGuard, GuardLimits

if TYPE_CHECKING:
    from meshns.dataplane.http1.context import HttpContext

log = logging.getLogger("meshns.dataplane.http2")


class StreamHandler(Protocol):
    finished: bool

    def start(self) -> None: ...

    def request_data(self, data: bytes, fc_len: int) -> None: ...

    def request_trailers(self, headers: Headers) -> None: ...

    def request_end(self) -> None: ...

    def downstream_reset(self, code: int) -> None: ...


MakeStream = Callable[["Downstream", int, Headers, bool], StreamHandler]


class Downstream(H2Conn):
    def __init__(self, hctx: HttpContext, make_stream: MakeStream, what: str) -> None:
        super().__init__(client_side=False)
        self.hctx = hctx
        self.make_stream = make_stream
        self.what = what  # for log lines: the service, or "inbound"
        self.streams: dict[int, StreamHandler] = {}
        self.guard = FloodGuard(GuardLimits(), asyncio.get_running_loop().time)
        self.going_away = False
        self.lost = False
        self._source = ""
        self.opened = 0  # streams so far; the idle check compares it between two ticks
        self.opened_at_tick = -1
        self.idle_handle: asyncio.TimerHandle | None = None

    def take_over(self, transport: asyncio.Transport, first: bytes) -> None:
        """Become the protocol of an accepted connection whose first bytes were already read."""
        self.hctx.stats.active += 1
        self.hctx.stats.h2_connections += 1
        self.hctx.live.add(self)
        transport.set_protocol(self)
        self.connection_made(transport)
        self.idle_handle = asyncio.get_running_loop().call_later(self.hctx.config.idle_timeout_s, self.idle_tick)
        if first:
            self.data_received(first)

    def idle_tick(self) -> None:
        """A connection with no stream for a whole idle period gets GOAWAY (as Envoy's idle_timeout)."""
        self.idle_handle = None
        if self.closed:
            return
        if not self.streams and self.opened == self.opened_at_tick:
            self.goaway(NO_ERROR, "idle")
            return
        self.opened_at_tick = self.opened
        self.idle_handle = asyncio.get_running_loop().call_later(self.hctx.config.idle_timeout_s, self.idle_tick)

    def source_address(self) -> str:
        if not self._source:
            self._source = self.describe()
        return self._source

    # -- events -------------------------------------------------------------------------------

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.request_data(event.data, event.flow_controlled_length)
            elif event.flow_controlled_length:
                self.ack(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.request_trailers(list(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.request_end()
        elif isinstance(event, h2.events.StreamReset):
            self.drop_outbox(event.stream_id)
            st = self.streams.pop(event.stream_id, None)
            if st is not None and not st.finished:
                st.downstream_reset(event.error_code)
                self.check(self.guard.premature_reset())
        elif isinstance(event, h2.events.PingReceived):
            self.check(self.guard.ping_received())
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.check(self.guard.settings_received())
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True  # the client will open no more streams
            if not self.streams or event.error_code != NO_ERROR:
                self.shut()
            else:
                self.keep_streams_after_goaway()

    def on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if self.check(self.guard.stream_opened()):
            return
        if self.going_away:
            self.reset(sid, REFUSED_STREAM)
            return
        self.opened += 1
        st = self.make_stream(self, sid, list(event.headers), event.stream_ended is not None)
        self.streams[sid] = st
        st.start()

    def check(self, reason: str | None) -> bool:
        if reason is None:
            return False
        self.hctx.stats.h2_floods += 1
        log.warning("HTTP/2 client %s (%s) flooding, GOAWAY ENHANCE_YOUR_CALM: %s", self.source_address(),
                    self.what, reason)
        self.goaway(ENHANCE_YOUR_CALM, reason)
        return True

    def protocol_failed(self, why: str) -> None:
        self.hctx.stats.h2_protocol_errors += 1
        log.warning("HTTP/2 client %s (%s) closed with GOAWAY: %s", self.source_address(), self.what, why)

    # -- from the stream handlers -------------------------------------------------------------

    def stream_done(self, sid: int) -> None:
        self.streams.pop(sid, None)
        if (self.going_away or self.hctx.draining) and not self.streams:
            if self.hctx.draining and not self.going_away:
                self.goaway(NO_ERROR)
            else:
                self.shut()

    def cancel_stream(self, sid: int) -> None:
        self.reset(sid, CANCEL)

    # -- lifecycle ----------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        for st in list(self.streams.values()):
            if not st.finished:
                st.downstream_reset(CANCEL)
        self.streams.clear()
        self.drop_all_outboxes()
        if self in self.hctx.live:
            self.hctx.live.discard(self)
            self.hctx.stats.active -= 1

    def eof_received(self) -> bool:
        return False  # the client is done: close (streams in flight are cancelled)

    def close_if_idle(self) -> None:
        """Drain: GOAWAY now (no new streams); the connection closes when its streams end."""
        if self.closed:
            return
        if not self.streams:
            self.goaway(NO_ERROR)
            return
        self.going_away = True
        # Written by hand: h2's close_connection would also end the streams still answering.
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = NO_ERROR
        self.flush()
        self.transport.write(frame.serialize())

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()

