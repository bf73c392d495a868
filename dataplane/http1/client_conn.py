"""What the two client-facing HTTP/1 connections share: pausing the client, backpressure from
the client's socket to the upstream of the exchange in flight, the first-bytes decision, and
the refusal of bad input.

ServiceConnection (outbound, to a service VIP) and InboundConnection (inbound, to the pod's app)
both start undecided: they buffer the client's first bytes until ``detect`` says HTTP/1 or not
(or the upstream speaks first), then either parse requests (``go_http``, then ``feed``) or become
a byte pipe (``go_opaque``). ``paused`` is a bit set: several reasons may hold the client's
reading at once, and reading resumes only when none is left.

Bad input is refused here for both (``refuse``, see ``refuse.py``): a request the parser will
not take, a body over ``max_request_body_bytes``, a head not complete within
``request_headers_timeout_s`` (a clock started by the head's first byte, stopped by its end; a
client that only opened a connection, or sits between keep-alive requests, is the idle
timeout's). A client that reads nothing while its socket buffer stays full holds the upstream
paused (``pause_writing``), so memory stays bounded; one whole idle period without it reading
ends the connection (``stalled``).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Final

from meshns.dataplane.http1 import refuse
from meshns.dataplane.http1.detect import Http1, Http2, NeedMore, detect, is_h2_server_hello, looks_like_request
from meshns.dataplane.http1.head import ParseError, local_response
from meshns.dataplane.http1.upstream import HIGH_WATER, LOW_WATER
from meshns.dataplane.labels import Peers

# Why reading from the client is paused (the bits of ``paused``); the exchange's own bits are
# 1 and 2 (exchange.PAUSE_NO_UPSTREAM, PAUSE_UPSTREAM_FULL).
PAUSE_PIPELINE: Final = 4
PAUSE_UPGRADE: Final = 8
PAUSE_OPAQUE: Final = 16
# After a refusal, how long the client may go on sending before the connection is closed. A
# close with unread bytes in the socket sends a reset, which can destroy the refusal before the
# client has read it (a client still uploading, or an oversized head): so the refusal is followed
# by a FIN, the client's further bytes are read and dropped, and the close comes when the client
# closes or after this delay (Envoy's delayed_close_timeout, nginx's lingering close).
LINGER_S: Final = 1.0


class ClientConnection(asyncio.Protocol):
    # Subclasses narrow the Any-typed ones to their own exchange and parser types.
    hctx: Any
    transport: Any
    paused: int
    lost: bool
    write_paused: bool
    current: Any
    parsing: Any
    queue: Any
    parser: Any
    pipe: Any
    bad: Any
    http: bool
    opaque: bool
    buf: bytes
    peers: Peers
    listener = "outbound"  # the label of refusals in metrics and logs

    def _init_client(self, hctx: Any, transport: asyncio.Transport) -> None:
        """The state both connections start with: undecided, nothing parsed, nothing paused."""
        self.hctx = hctx
        self.transport = transport
        # asyncio.get_running_loop() makes a getpid() system call every time (the fork check
        # of CPython's C accelerator), so the per-request paths use this one.
        self.loop = asyncio.get_running_loop()
        self.http = False
        self.opaque = False
        self.buf = b""
        self.up_first: list[bytes] = []
        self.client_eof = False
        self.parser = None
        self.current = None
        self.parsing = None
        self.queue = collections.deque()
        self.paused = 0
        self.write_paused = False
        self.lost = False
        self.upgrade_rest = b""
        self.pipe = None
        self.timer: asyncio.TimerHandle | None = None
        self.bad = None
        self.requests_seen = 0
        self.requests_at_tick = -1
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_since: float | None = None  # when the request head in progress began
        self.body_limit: int = hctx.config.max_request_body_bytes  # 0: none
        self.refusing = False
        self.linger: asyncio.TimerHandle | None = None
        # Idle ticks: how often the client's socket drained below the low-water mark, and
        # whether it was full at the last tick (see ``stalled``).
        self.drains = 0
        self.drains_at_tick = 0
        self.full_at_tick = False

    def _register(self) -> None:
        """Take the accepted transport over: counted, tracked for drain, our write limits."""
        self.hctx.stats.active += 1
        self.hctx.live.add(self)
        self.transport.set_protocol(self)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def source_address(self) -> str:
        raise NotImplementedError

    def endpoint_pod(self) -> str:
        """The destination workload label of a refused request's metrics row."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def stop_exchange(self, ex: Any) -> None:
        """Stop whatever the exchange still waits for (its task, an app dial)."""

    def go_http(self) -> None:
        raise NotImplementedError

    def go_opaque(self) -> None:
        raise NotImplementedError

    def go_h2(self) -> None:
        """HTTP/2 prior knowledge: the connection leaves this object for an HTTP/2 endpoint
        (http2.server.Downstream) that handles its streams one by one; the upstream dialled for
        detection is not needed."""
        self.http = True  # no more detection here; this object only forgets the connection
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.drop_detection_dial()
        self.lost = True  # whatever still calls back into this object is ignored
        self.done()
        data, self.buf = self.buf, b""
        self.start_h2(data)

    def drop_detection_dial(self) -> None:
        raise NotImplementedError

    def start_h2(self, first: bytes) -> None:
        raise NotImplementedError

    def done(self) -> None:
        """The connection is no longer this object's: uncounted, no longer drained."""
        if self in self.hctx.live:
            self.hctx.live.discard(self)
            self.hctx.stats.active -= 1

    def upstream_decides(self) -> bool:
        """Whether the bytes the upstream sent first make the connection opaque (a server-first
        protocol spoke). An HTTP/2 server's SETTINGS does not: it is sent before any request,
        and the client's preface decides."""
        return bool(self.up_first) and not is_h2_server_hello(b"".join(self.up_first))

    def opaque_because(self, reason: str) -> None:
        """Hook for a log line when the first bytes are not HTTP/1."""

    # pausing the client

    def pause(self, bit: int) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= bit

    def resume(self, bit: int) -> None:
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and not self.lost:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        cur = self.current
        # While a splice moves the body (cur.splice), the upstream transport stays paused: the
        # kernel reads its socket, and the pump also reports the client's socket full here.
        if cur is not None and cur.up is not None and cur.splice is None:
            cur.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.drains += 1
        cur = self.current
        if cur is not None and cur.up is not None and cur.splice is None:
            cur.up.transport.resume_reading()

    def stalled(self) -> bool:
        """Called once per idle tick: whether the client's socket stayed full (the upstream held
        paused) from the last tick to this one without draining once. Such a client reads
        nothing; it is cut at the idle timeout like a silent one (Envoy's stream idle timeout)."""
        stalled = self.write_paused and self.full_at_tick and self.drains == self.drains_at_tick
        self.full_at_tick = self.write_paused
        self.drains_at_tick = self.drains
        return stalled

    # the request-headers timeout

    def on_request_begin(self) -> None:
        """The first byte of a request head (from the parser, or the first bytes while
        undecided): the client has ``request_headers_timeout_s`` to complete it. The clock is a
        start time; its timer is armed once and re-armed lazily (like the idle tick), so a busy
        keep-alive connection costs one timer per period, not one per request."""
        if self.head_since is None and not self.refusing:
            loop = self.loop
            self.head_since = loop.time()
            if self.head_timer is None:
                self.head_timer = loop.call_later(self.hctx.config.request_headers_timeout_s, self.head_timeout)

    def head_done(self) -> None:
        self.head_since = None

    def stop_head_clock(self) -> None:
        self.head_since = None
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timeout(self) -> None:
        self.head_timer = None
        since = self.head_since
        if since is None or self.lost or self.refusing or self.pipe is not None:
            return
        loop = asyncio.get_running_loop()
        timeout = self.hctx.config.request_headers_timeout_s
        left = since + timeout - loop.time()
        if left > 0:  # the head in progress started after the timer was armed
            self.head_timer = loop.call_later(left, self.head_timeout)
            return
        if self.http and self.paused:
            # We hold its reading (a pipelined request waits): not its delay; the clock restarts.
            self.head_since = loop.time()
            self.head_timer = loop.call_later(timeout, self.head_timeout)
            return
        if not self.http:
            if self.opaque:
                return
            if not looks_like_request(self.buf):
                # A few bytes that are not yet a method: a slow client-first protocol, not HTTP.
                self.opaque_because("no request line within the request headers timeout")
                self.go_opaque()
                return
        self.refuse(ParseError(408, "request head not complete within the request headers timeout"))

    # refusing bad input

    def refuse(self, exc: ParseError) -> None:
        """Refuse the request being read: answered now when no response is in flight; after the
        response in flight when the bad bytes are a later (pipelined) request's; when they are
        the body of the request in flight, its upstream try is reset and the refusal is its
        answer (or the client is reset, if a response had already started). Nothing more is
        read from the client; the connection closes after the answer."""
        refuse.count(self.hctx, exc, self.listener, self.source_address())
        self.refusing = True
        self.http = False
        self.opaque = True
        self.stop_head_clock()
        self.pause(PAUSE_PIPELINE)
        # Pipelined requests queued behind the one in flight never went upstream; the client
        # learns from the close that they were not answered, as after any refused pipeline.
        self.queue.clear()
        cur = self.current
        if cur is None:
            self.reply_bad(exc)
        elif cur is self.parsing and not cur.req_complete:
            self.abandon(cur, exc)
        else:
            self.bad = exc  # flow_finished answers it

    def reply_bad(self, exc: ParseError) -> None:
        refuse.answer(self.hctx, self.transport, exc, self.peers, self.endpoint_pod(), self.source_address())
        self.linger_close()

    def linger_close(self) -> None:
        """Close after a refusal without losing it (see LINGER_S)."""
        t = self.transport
        if t.is_closing() or self.linger is not None:
            return
        if self.client_eof or not t.can_write_eof():
            t.close()  # nothing more will come from the client: no reset to fear
            return
        t.write_eof()
        self.paused = 0
        t.resume_reading()  # what the client still sends is read and dropped (data_received)
        self.linger = asyncio.get_running_loop().call_later(LINGER_S, t.close)

    def end_linger(self) -> None:
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None

    def abandon(self, ex: Any, exc: ParseError) -> None:
        if ex.committed:
            self.abort()  # a response started: a truncated answer must never look whole
            return
        self.stop_exchange(ex)
        ex.detach(abort=True)
        extra = ex.start_local_reply(exc.status, refuse.DPE)
        if extra is None:
            return
        text = refuse.STATUS_TEXT.get(exc.status, "Bad Request")
        self.transport.write(local_response(exc.status, text, extra, f"{text}\n".encode(), close=True))
        ex.finish(False)

    def body_too_large(self) -> ParseError:
        """413: a declared length over ``max_request_body_bytes`` (refused before anything goes
        upstream), or a chunked body growing past it (checked per chunk by the subclasses)."""
        return ParseError(413, f"request body over max_request_body_bytes ({self.body_limit})")

    # client bytes

    def data_received(self, data: bytes) -> None:
        if self.http:
            self.feed(data)
            return
        if self.refusing:
            return  # the refusal is on its way; nothing more is read
        if not self.buf and not self.opaque:
            self.on_request_begin()
        self.buf += data
        if self.opaque:
            return  # waiting for the upstream, or ignoring the rest
        verdict = detect(self.buf)
        if isinstance(verdict, NeedMore):
            return
        if isinstance(verdict, Http1):
            self.go_http()
        elif isinstance(verdict, Http2):
            self.go_h2()
        else:
            self.opaque_because(verdict.reason)
            self.go_opaque()
