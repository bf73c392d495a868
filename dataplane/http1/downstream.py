"""The client side of a connection to a service VIP: detection, then HTTP/1.1 or opaque TCP.

On accept an endpoint is chosen and dialled at once (eager connect) while we wait for the client's
first bytes, so server-first protocols see their banner with no sniffing delay. Whoever speaks
first decides: upstream bytes first, or client bytes that cannot be an HTTP/1.x request line, make
the connection opaque TCP, piped to the eager connection (balanced per connection; a failed eager
dial tries other endpoints, up to the default route's retry attempts). An HTTP/1.x request line
makes it HTTP: every request is routed and balanced on its own (``flow.RequestFlow``), and the
eager connection (dialled or still dialling) is kept for the first try to reach its endpoint, which
the balancer prefers for that try. It is never pooled unused: an idle connection parked at the
server sidecar makes it dial the app, and a one-connection-at-a-time app (``http.server``) would
then wait on it while the real request queues behind. Requests are answered in order; a pipelined request
waits (with the client paused) until the one before it finished.

One exception: when the pool already holds an idle connection to the chosen endpoint, that port
has spoken HTTP/1 through this sidecar (only HTTP connections are pooled) and the request will
take that connection, so an eager dial would be a TLS handshake the server sidecar starts for
nothing (and a reset it logs). The dial then waits EAGER_GRACE_S for the client's first bytes:
a request needs no dial at all, other bytes dial at once, and silence (a server-first protocol on
that port after all) dials when the grace ends, so its banner is late by that much, never stalled.

Reading from the client is paused for several independent reasons at once (no upstream attached
yet, upstream transport full, pipelined request waiting, upgrade pending), kept as bits so one
reason's resume does not undo another's pause.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Final, cast

from meshns.dataplane.http1.client_conn import PAUSE_OPAQUE, PAUSE_PIPELINE, PAUSE_UPGRADE, ClientConnection
from meshns.dataplane.http1.context import HttpContext
from meshns.dataplane.http1.flow import RequestFlow
from meshns.dataplane.http1.head import ParseError, RequestHead
from meshns.dataplane.http1.parser import RequestParser
from meshns.dataplane.http1.pipe import Pipe
from meshns.dataplane.http1.upstream import ConnectFailed, ServicePool, UpstreamConn
from meshns.dataplane.labels import UNKNOWN
from meshns.dataplane.metrics import TcpObs
from meshns.dataplane.observe import NULL_TCP, peername_of
from meshns.dataplane.policy.state import choose_endpoint
from meshns.snapshot import HttpRoute, Service

log = logging.getLogger("meshns.dataplane.http1")

# How long a new connection waits for its first bytes before dialling, when an idle pooled
# connection to the endpoint shows it speaks HTTP (see above). A client-first client has sent its
# request within this on loopback; 5 ms is what a server-first client waits at worst.
EAGER_GRACE_S: Final = 0.005


class ServiceConnection(ClientConnection):
    transport: asyncio.Transport
    hctx: HttpContext
    parser: RequestParser | None
    current: RequestFlow | None
    parsing: RequestFlow | None
    queue: collections.deque[RequestFlow]
    pipe: Pipe | None
    bad: ParseError | None

    def __init__(self, hctx: HttpContext, transport: asyncio.Transport, dst: tuple[str, int],
                 service: Service) -> None:
        self._init_client(hctx, transport)
        self.dst = dst
        self.default_host = f"{dst[0]}:{dst[1]}".encode()
        self.service = service
        self.state, self.pool = hctx.policy(service)
        self.peers = hctx.obs.outbound(dst[0], dst[1], service.name)
        self._source = ""
        self.eager: UpstreamConn | None = None
        self.eager_task: asyncio.Task[None] | None = None
        self.eager_tried: set[str] = set()
        self.eager_key: tuple[str, int] | None = None  # where the eager dial goes (HTTP: until claimed)
        self.eager_wait: asyncio.TimerHandle | None = None  # a dial deferred for the grace (see above)
        self.closing = False
        self.feeding = False  # inside parser.feed
        self.deferred: tuple[RequestFlow, HttpRoute] | None = None  # see start_after_feed

    # lifecycle

    def begin(self) -> None:
        hctx = self.hctx
        self._register()
        loop = asyncio.get_running_loop()
        if self.start_eager():
            self.timer = loop.call_later(hctx.config.idle_timeout_s, self.abort)
        else:
            self.timer = loop.call_later(self.service.pool.connect_timeout_s, self.silent_timeout)

    def idle_tick(self) -> None:
        if self.stalled():
            log.info("client %s of %s read nothing for %ss; closing", self.source_address(), self.service.name,
                     self.hctx.config.idle_timeout_s)
            self.hctx.stats.idle_timeouts += 1
            self.timer = None
            self.abort()
            return
        if self.current is None and self.requests_seen == self.requests_at_tick:
            self.timer = None
            self.transport.close()
            return
        self.requests_at_tick = self.requests_seen
        self.timer = asyncio.get_running_loop().call_later(self.hctx.config.idle_timeout_s, self.idle_tick)

    def close_if_idle(self) -> None:
        """Drain: a keep-alive connection between requests is closed now; busy ones after their
        response (``flow_finished`` sees ``hctx.draining``)."""
        if self.http and self.current is None:
            self.transport.close()

    def silent_timeout(self) -> None:
        if not self.http:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.stop_head_clock()
        self.end_linger()
        if self.timer is not None:
            self.timer.cancel()
        if self.eager_task is not None:
            self.eager_task.cancel()
        self.stop_eager_wait()
        if self.eager is not None:
            self.pool.close(self.eager, abort=True)
            self.eager = None
        if self.current is not None:
            self.current.downstream_lost()
        self.queue.clear()
        if self.pipe is None:
            self.done()

    def abort(self) -> None:
        if self.pipe is not None:
            self.pipe.abort()
        else:
            self.transport.abort()

    def source_address(self) -> str:
        if not self._source:
            self._source = peername_of(self.transport)
        return self._source

    def endpoint_pod(self) -> str:
        return UNKNOWN  # a refused request never chose an endpoint

    def stop_exchange(self, ex: RequestFlow) -> None:
        if ex.task is not None and not ex.task.done():
            ex.task.cancel()
        ex.stop_now_try()

    def buffered_bytes(self) -> int:
        n = self.transport.get_write_buffer_size()
        flow = self.current
        if flow is not None and flow.up is not None:
            n += flow.up.transport.get_write_buffer_size()
        return n



    def opaque_because(self, reason: str) -> None:
        log.debug("opaque to %s: %s", self.service.name, reason)

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.refusing:
            if self.linger is not None:
                self.transport.close()  # the client read the refusal and closed: so do we
            return True
        if self.http:
            if self.current is None:
                self.transport.close()
            return True
        self.go_opaque()
        return True

    def feed(self, data: bytes) -> None:
        parser = self.parser
        assert parser is not None
        self.feeding = True
        try:
            rest = parser.feed(data)
        except ParseError as exc:
            self.feeding = False
            # A flow whose own bytes were bad is abandoned (finished) here and never begins;
            # one whose request was whole goes on, and the refusal follows its response.
            self.refuse(exc)
            self.start_deferred()
            return
        self.feeding = False
        if rest is not None:
            self.upgrade_rest = rest
            self.pause(PAUSE_UPGRADE)
        self.start_deferred()

    def start_after_feed(self, flow: RequestFlow, route: HttpRoute) -> None:
        """A flow's first try (``RequestFlow.start_now``) begins once the bytes being parsed
        were all parsed, as when it ran in a task: a request whose body turns out malformed
        in the same read is refused before anything of it reaches the upstream."""
        if not self.feeding:
            flow.start_now(route)
            return
        self.start_deferred()
        self.deferred = (flow, route)

    def start_deferred(self) -> None:
        deferred = self.deferred
        if deferred is not None:
            self.deferred = None
            flow, route = deferred
            if not flow.finished and not self.lost:
                flow.start_now(route)

    # RequestSink

    def on_request_head(self, head: RequestHead) -> None:
        self.head_done()
        if self.body_limit and head.content_length is not None and head.content_length > self.body_limit:
            raise self.body_too_large()
        self.requests_seen += 1
        flow = RequestFlow(self, head)
        self.parsing = flow
        if self.current is None:
            self.current = flow
            flow.start()
        else:
            self.queue.append(flow)
            self.pause(PAUSE_PIPELINE)

    def on_request_body(self, data: bytes) -> None:
        flow = self.parsing
        if flow is not None:
            if self.body_limit and flow.req_body_bytes + len(data) > self.body_limit:
                raise self.body_too_large()
            self.hctx.stats.outbound.bytes_up += len(data)
            flow.request_body(data)

    def on_request_complete(self) -> None:
        flow = self.parsing
        if flow is not None:
            flow.request_complete()

    def flow_finished(self, flow: RequestFlow, keep_alive: bool) -> None:
        if flow is self.parsing and flow.req_complete:
            # Nothing more of it will be parsed: an idle keep-alive connection must not keep the
            # last request's flow (its head, trace, attempts: ~3 KB) until the next one.
            self.parsing = None
        if flow is not self.current or self.lost:
            return
        self.current = None
        if self.bad is not None:
            self.reply_bad(self.bad)
            return
        if self.refusing:
            self.linger_close()  # the refusal was this exchange's answer
            return
        if not keep_alive or (self.client_eof and not self.queue) or self.hctx.draining:
            self.transport.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.current = nxt
            if not self.queue:
                self.resume(PAUSE_PIPELINE)
            nxt.start()
        else:
            self.resume(PAUSE_PIPELINE)

    # detection outcomes

    def go_http(self) -> None:
        self.http = True
        if self.stop_eager_wait():  # never dialled: the request takes the idle connection
            self.eager_key = None
        if self.timer is not None:
            self.timer.cancel()
        # Keep-alive idle timeout, checked lazily: one timer per period, not one per request.
        self.timer = asyncio.get_running_loop().call_later(self.hctx.config.idle_timeout_s, self.idle_tick)
        self.parser = self.hctx.kit.request(self)
        data, self.buf = self.buf, b""
        self.feed(data)

    def go_opaque(self) -> None:
        if self.opaque and self.pipe is not None:
            return
        self.opaque = True
        self.pause(PAUSE_OPAQUE)
        if self.eager is not None:
            self.start_pipe(self.eager, [self.buf] if self.buf else [], self.up_first)
        elif self.eager_wait is not None:
            self.eager_now()
        elif self.eager_task is None and not self.start_eager():
            self.transport.close()

    def drop_detection_dial(self) -> None:
        self.stop_eager_wait()
        if self.eager_task is not None:
            self.eager_task.cancel()
            self.eager_task = None
        self.drop_eager()

    def start_h2(self, first: bytes) -> None:
        """The streams are routed one by one (http2.outbound)."""
        # Imported on the first HTTP/2 connection: h2 costs a sidecar that never sees one ~4 MB.
        from meshns.dataplane.http2.outbound import OutboundTarget  # noqa: PLC0415
        from meshns.dataplane.http2.server import Downstream  # noqa: PLC0415

        target = OutboundTarget(self.hctx, self.service, self.dst, self.peers)
        Downstream(self.hctx, target.make_stream, self.service.name).take_over(self.transport, first)

    def start_eager(self) -> bool:
        hctx = self.hctx
        attempts = self.service.routes[-1].retries.attempts if self.service.routes else 0
        if len(self.eager_tried) > attempts:
            return False
        port = self.service.target_port(self.dst[1])
        ep = choose_endpoint(self.service, self.state, None, self.eager_tried,
                             asyncio.get_running_loop().time(), hctx.rand)
        if ep is None or port is None:
            return False
        self.eager_tried.add(ep.ip)
        self.eager_key = (ep.ip, port)
        if not self.opaque and self.pool.has_idle(self.eager_key):
            self.eager_wait = asyncio.get_running_loop().call_later(EAGER_GRACE_S, self.eager_now)
        else:
            self.eager_now()
        return True

    def eager_now(self) -> None:
        """Dial the chosen endpoint (at once, or when a deferred dial's grace ended)."""
        self.stop_eager_wait()
        if self.lost or self.eager_key is None:
            return
        self.state.breaker.connection_opened()  # counted, but an eager dial is never refused
        self.eager_task = asyncio.ensure_future(self.eager_connect(self.eager_key))

    def stop_eager_wait(self) -> bool:
        """Cancel a deferred dial's grace; True if one was pending."""
        if self.eager_wait is None:
            return False
        self.eager_wait.cancel()
        self.eager_wait = None
        return True

    def eager_ip(self) -> str | None:
        """The endpoint of an unclaimed eager connection, which the first try should prefer."""
        return self.eager_key[0] if self.http and self.eager_key is not None else None

    async def claim_eager(self, key: tuple[str, int]) -> UpstreamConn | None:
        """The connection for the first try to ``key``: the eager one when it is up; while it is
        still dialling, an idle pooled connection to the same endpoint if there is one (a
        keep-alive connection answers at once, a fresh mTLS handshake takes milliseconds), else
        the eager one once dialled. Whatever the first try does not use is closed, never pooled
        unused. None: the pool dials as usual."""
        if self.eager_key is None:
            return None
        if key != self.eager_key:
            self.drop_eager()
            return None
        if self.eager is None and self.eager_task is not None:
            idle = self.pool.take_idle(key)
            if idle is not None:
                self.drop_eager()  # the dial in flight is closed when it completes
                return idle
            await asyncio.wait((self.eager_task,))  # its outcome lands in self.eager
        self.eager_key = None
        conn, self.eager = self.eager, None
        if conn is None or not conn.usable():
            return None
        conn.user = None
        return conn

    def claim_now(self, key: tuple[str, int]) -> UpstreamConn | None:
        """What ``claim_eager`` and then ``pool.acquire`` would give at once, without waiting:
        the eager connection when it is up and goes to ``key``, else an idle pooled one (while
        no eager dial to another endpoint is pending). None: the try waits in ``one_try``,
        which decides afresh (nothing here was changed that it would see differently)."""
        eager_key = self.eager_key
        if eager_key is None:
            return self.pool.take_idle(key)
        if key != eager_key:
            return None
        conn = self.eager
        if conn is None:
            if self.eager_task is None:
                return None
            idle = self.pool.take_idle(key)
            if idle is not None:
                self.drop_eager()  # the dial in flight is closed when it completes
            return idle
        if not conn.usable():
            return None
        self.eager_key = None
        self.eager = None
        conn.user = None
        return conn

    def drop_eager(self) -> None:
        self.eager_key = None
        if self.eager is not None:
            eager, self.eager = self.eager, None
            self.pool.close(eager)

    async def eager_connect(self, key: tuple[str, int]) -> None:
        try:
            conn = await self.pool.connect(key, self)
        except ConnectFailed as exc:
            self.eager_task = None
            log.info("eager connect to %s failed: %s", self.service.name, exc)
            if self.lost or self.http:
                self.eager_key = None  # requests choose (and dial) afresh
                return
            if not self.start_eager() and self.opaque:
                self.hctx.stats.connect_failures += 1
                self.transport.close()
            return
        self.eager_task = None
        if self.lost or (self.http and self.eager_key != key):
            self.pool.close(conn)  # unclaimed (see claim_eager) or no longer wanted
        elif self.http:
            self.eager = conn  # a first try is waiting for it, or will claim it
        elif self.pipe is None:
            self.eager = conn
            if self.opaque or self.upstream_decides():
                self.start_pipe(conn, [self.buf] if self.buf else [], self.up_first)

    # UpstreamUser, while detecting: the upstream spoke first

    def up_data(self, conn: UpstreamConn, data: bytes) -> None:
        if self.http:  # the server spoke on a connection no request uses yet: not reusable
            if conn is self.eager:
                self.drop_eager()
            else:
                self.pool.close(conn, abort=True)
            return
        self.up_first.append(data)
        if self.eager is conn and self.upstream_decides():
            self.go_opaque()
        # else: the connect task has not resumed yet; it sees up_first and pipes

    def up_eof(self, conn: UpstreamConn) -> None:
        pass

    def up_lost(self, conn: UpstreamConn, exc: Exception | None) -> None:
        if conn is self.eager:
            self.eager = None
            if self.http:
                self.eager_key = None

    def up_pause(self) -> None:
        pass

    def up_resume(self) -> None:
        pass

    # the byte pipes

    def start_pipe(self, conn: UpstreamConn, to_up: list[bytes], to_client: list[bytes]) -> None:
        self.eager = None
        conn.user = None
        self.buf = b""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ip, port = conn.key
        obs = self.hctx.obs.tcp_start(self.peers, self.hctx.obs.index().workload(ip),
                                      self.source_address(), f"{ip}:{port}")
        self._pipe_to(conn, self.pool, to_up, to_client, obs)

    def start_upgrade(self, conn: UpstreamConn, pool: ServicePool, rest: bytes) -> None:
        self.http = False
        self.current = None
        to_up = [self.upgrade_rest] if self.upgrade_rest else []
        self._pipe_to(conn, pool, to_up, [rest] if rest else [], NULL_TCP)

    def _pipe_to(self, conn: UpstreamConn, pool: ServicePool, to_up: list[bytes], to_client: list[bytes],
                 obs: TcpObs) -> None:
        """From here on the connection is a raw byte relay (opaque TCP, or after a 101)."""

        def ended() -> None:
            pool.drop(conn)
            self.hctx.obs.tcp_end(obs)
            self.done()

        obs.received += sum(map(len, to_up))
        obs.sent += sum(map(len, to_client))
        self.pipe = Pipe(self.transport, conn.transport, self.hctx.stats.outbound,
                         self.hctx.config.idle_timeout_s, ended, obs)
        self.paused = 0
        self.pipe.start(to_up, to_client, self.client_eof)


def take_over(hctx: HttpContext, transport: asyncio.BaseTransport, dst: tuple[str, int]) -> bool:
    """The relay's hook: True when ``dst`` is a service and this module now owns the connection."""
    service = hctx.store.lookup(*dst)
    if service is None:
        return False
    ServiceConnection(hctx, cast(asyncio.Transport, transport), dst, service).begin()
    return True
