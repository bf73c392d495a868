"""What the two client-facing HTTP/1 connections share: pausing the client, backpressure from
the client's socket to the upstream of the exchange in flight, and the first-bytes decision.

ServiceConnection (outbound, to a service VIP) and InboundConnection (inbound, to the pod's app)
both start undecided: they buffer the client's first bytes until ``detect`` says HTTP/1 or not
(or the upstream speaks first), then either parse requests (``go_http``, then ``feed``) or become
a byte pipe (``go_opaque``). ``paused`` is a bit set: several reasons may hold the client's
reading at once, and reading resumes only when none is left.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from meshns.dataplane.http1.detect import Http1, Http2, NeedMore, detect, is_h2_server_hello
from meshns.dataplane.http1.upstream import HIGH_WATER, LOW_WATER


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

    def _init_client(self, hctx: Any, transport: asyncio.Transport) -> None:
        """The state both connections start with: undecided, nothing parsed, nothing paused."""
        self.hctx = hctx
        self.transport = transport
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

    def _register(self) -> None:
        """Take the accepted transport over: counted, tracked for drain, our write limits."""
        self.hctx.stats.active += 1
        self.hctx.live.add(self)
        self.transport.set_protocol(self)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

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
        if cur is not None and cur.up is not None:
            cur.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        cur = self.current
        if cur is not None and cur.up is not None:
            cur.up.transport.resume_reading()

    # client bytes

    def data_received(self, data: bytes) -> None:
        if self.http:
            self.feed(data)
            return
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
