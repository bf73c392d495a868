"""The server side of the mesh: an inbound connection to the app, HTTP/1.x-aware when it can be.

Theory of operation
-------------------
The relay hands every inbound connection it would forward to ``take_over_inbound``. From there:

    detecting  the app is dialled at once (from the inbound source address, to the original
               destination), while the client's first bytes are awaited: whoever speaks first
               decides. The app speaking first, or client bytes that cannot start an HTTP/1.x
               request line, or a client FIN -> opaque. A request line -> http.
    opaque     a raw byte ``Pipe`` between client and app, with TCP metrics (what the L4 relay
               did before). If the app cannot be reached, the client is closed.
    http       requests are parsed and forwarded one at a time (``InboundExchange``) over the one
               app connection, in order; a pipelined request waits with the client paused. If
               the app closed its side of a keep-alive, the next request dials again. An app that
               cannot be reached gives 503 with response flag UF (so the calling sidecar knows the
               request never reached the app). A 101 turns the connection into a ``Pipe``.

Reading from the client is paused for independent reasons kept as bits (see ``downstream``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Final, cast

from meshns.dataplane.decide import Forward
from meshns.dataplane.http1.client_conn import PAUSE_OPAQUE, PAUSE_PIPELINE, PAUSE_UPGRADE, ClientConnection
from meshns.dataplane.http1.context import HttpContext
from meshns.dataplane.http1.head import ParseError, RequestHead
from meshns.dataplane.http1.inbound_exchange import InboundExchange
from meshns.dataplane.http1.parser import RequestParser
from meshns.dataplane.http1.pipe import Pipe
from meshns.dataplane.http1.upstream import HIGH_WATER, LOW_WATER, UpstreamConn, as_protocol
from meshns.dataplane.inbound_authz import deny_tcp
from meshns.dataplane.labels import Peers
from meshns.dataplane.metrics import TcpObs
from meshns.dataplane.observe import NULL_TCP, peername_of
from meshns.mtls.tls import MESH_ALPN_H2

log = logging.getLogger("meshns.dataplane.http1.inbound")

# How long an undecided client may stay silent once the app is known to be unreachable.
REFUSAL_SNIFF_S: Final = 1.0


class InboundConnection(ClientConnection):
    listener = "inbound"
    transport: asyncio.Transport
    hctx: HttpContext
    parser: RequestParser | None
    current: InboundExchange | None
    parsing: InboundExchange | None
    queue: collections.deque[InboundExchange]
    pipe: Pipe | None
    bad: ParseError | None

    def __init__(self, hctx: HttpContext, transport: asyncio.Transport, fwd: Forward, peer: str = "") -> None:
        self._init_client(hctx, transport)
        self.fwd = fwd
        self.peer_id = peer  # the client's verified SPIFFE ID; "" for plaintext
        self.app_addr = str(fwd.target)
        self.default_host = self.app_addr.encode()
        self.source = peername_of(transport)
        self.peers = hctx.obs.inbound(self.source.rpartition(":")[0], fwd.target.ip, fwd.target.port, peer)
        self.app: UpstreamConn | None = None
        self.dial_task: asyncio.Task[None] | None = None
        self.dial_failed = False
        self.waiting: InboundExchange | None = None

    # lifecycle

    def begin(self) -> None:
        hctx = self.hctx
        self._register()
        self.dial()
        self.timer = asyncio.get_running_loop().call_later(hctx.config.idle_timeout_s, self.idle_tick)

    def idle_tick(self) -> None:
        self.timer = None
        if self.pipe is not None:
            return
        if self.stalled():
            log.info("client %s read nothing for %ss; closing", self.source, self.hctx.config.idle_timeout_s)
            self.hctx.stats.idle_timeouts += 1
            self.abort()
            return
        if self.current is None and self.requests_seen == self.requests_at_tick:
            self.transport.close()
            return
        self.requests_at_tick = self.requests_seen
        self.timer = asyncio.get_running_loop().call_later(self.hctx.config.idle_timeout_s, self.idle_tick)

    def close_if_idle(self) -> None:
        if self.http and self.current is None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.stop_head_clock()
        self.end_linger()
        if self.timer is not None:
            self.timer.cancel()
        if self.dial_task is not None:
            self.dial_task.cancel()
        if self.current is not None:
            self.current.downstream_lost()
        self.queue.clear()
        if self.pipe is None:
            if self.app is not None:
                self.close(self.app, abort=True)
            self.done()

    def abort(self) -> None:
        if self.pipe is not None:
            self.pipe.abort()
        else:
            self.transport.abort()

    def source_address(self) -> str:
        return self.source

    def endpoint_pod(self) -> str:
        return self.peers.destination_workload

    def stop_exchange(self, ex: InboundExchange) -> None:
        if self.waiting is ex:
            self.waiting = None

    def buffered_bytes(self) -> int:
        n = self.transport.get_write_buffer_size()
        if self.app is not None:
            n += self.app.transport.get_write_buffer_size()
        return n

    # the app connection (this object is its ConnOwner and, while detecting, its user)

    def dial(self) -> None:
        self.dial_task = asyncio.ensure_future(self._dial())

    async def _dial(self) -> None:
        made: list[UpstreamConn] = []

        def factory() -> asyncio.Protocol:
            conn = UpstreamConn(self, self.fwd.target.as_tuple())
            conn.user = None if self.http else self
            made.append(conn)
            return as_protocol(conn)

        try:
            async with asyncio.timeout(self.hctx.config.connect_timeout_s):
                await self.hctx.connector(factory, self.fwd)
        except (OSError, TimeoutError) as exc:
            self.dial_task = None
            self.hctx.stats.connect_failures += 1
            log.info("app connect failed %s -> %s: %r", self.source, self.app_addr, exc)
            self.app_unreachable()
            return
        self.dial_task = None
        conn = made[-1]
        if self.lost:
            conn.transport.abort()
            return
        self.dial_failed = False
        self.app = conn
        conn.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.app_ready(conn)
        elif self.opaque or self.upstream_decides():
            self.start_pipe()

    def drop_detection_dial(self) -> None:
        if self.dial_task is not None:
            self.dial_task.cancel()
            self.dial_task = None
        if self.app is not None:
            self.close(self.app)

    def start_h2(self, first: bytes) -> None:
        """A plaintext HTTP/2 client (prior knowledge): served per stream by http2.inbound, with
        HTTP/2 to the app from a pool of its own."""
        start_h2_inbound(self.hctx, self.transport, self.fwd, self.peer_id, self.peers, first)

    def app_unreachable(self) -> None:
        self.dial_failed = True
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.app_failed()
        elif self.opaque:
            self.transport.close()
        elif not self.http:
            asyncio.get_running_loop().call_later(REFUSAL_SNIFF_S, self.undecided_timeout)

    def undecided_timeout(self) -> None:
        if not self.http and not self.lost:
            self.transport.close()

    def want_app(self, ex: InboundExchange) -> None:
        app = self.app
        if app is not None and app.usable():
            app.user = None
            ex.app_ready(app)
        elif self.dial_failed:
            ex.app_failed()
        else:
            self.waiting = ex
            if self.dial_task is None:
                self.dial()

    def close(self, conn: UpstreamConn, abort: bool = False) -> None:
        conn.user = None
        if abort:
            conn.transport.abort()
        else:
            conn.transport.close()
        self.drop(conn)

    def release(self, conn: UpstreamConn, reusable: bool) -> None:
        conn.user = None
        if not reusable or not conn.usable():
            self.close(conn)
            return
        if conn.write_paused:
            conn.resume_writing()
        conn.transport.resume_reading()

    def drop(self, conn: UpstreamConn) -> None:
        if self.app is conn:
            self.app = None

    def up_data(self, conn: UpstreamConn, data: bytes) -> None:
        self.up_first.append(data)  # the app spoke first: not HTTP (unless h2's SETTINGS)
        if self.app is conn and self.upstream_decides():
            self.go_opaque()

    def up_eof(self, conn: UpstreamConn) -> None:
        pass

    def up_lost(self, conn: UpstreamConn, exc: Exception | None) -> None:
        if self.opaque and self.pipe is None:
            self.transport.close()

    def up_pause(self) -> None:
        pass

    def up_resume(self) -> None:
        pass



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
        assert self.parser is not None
        try:
            rest = self.parser.feed(data)
        except ParseError as exc:
            self.refuse(exc)
            return
        if rest is not None:
            self.upgrade_rest = rest
            self.pause(PAUSE_UPGRADE)

    def on_request_head(self, head: RequestHead) -> None:
        self.head_done()
        if self.body_limit and head.content_length is not None and head.content_length > self.body_limit:
            raise self.body_too_large()
        self.requests_seen += 1
        ex = InboundExchange(self, head)
        self.parsing = ex
        if self.current is None:
            self.current = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.pause(PAUSE_PIPELINE)

    def on_request_body(self, data: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            if self.body_limit and ex.req_body_bytes + len(data) > self.body_limit:
                raise self.body_too_large()
            self.hctx.stats.inbound.bytes_up += len(data)
            ex.request_body(data)

    def on_request_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.request_complete()

    def flow_finished(self, ex: InboundExchange, keep_alive: bool) -> None:
        if ex is self.parsing and ex.req_complete:
            self.parsing = None  # an idle keep-alive connection does not keep the last exchange
        if ex is not self.current or self.lost:
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
            self.current = self.queue.popleft()
            if not self.queue:
                self.resume(PAUSE_PIPELINE)
            self.current.start()
        else:
            self.resume(PAUSE_PIPELINE)

    # detection outcomes

    def go_http(self) -> None:
        self.http = True
        if self.app is not None:
            self.app.user = None
        self.parser = self.hctx.kit.request(self)
        data, self.buf = self.buf, b""
        self.feed(data)

    def go_opaque(self) -> None:
        if self.pipe is not None:
            return
        if not self.opaque:
            why = deny_tcp(self.hctx.store.current.snapshot.security, self.peer_id, self.fwd.target.port)
            if why is not None:
                self.hctx.stats.authz_denied_tcp += 1
                log.warning("connection %s (%s) -> port %d denied: %s", self.source, self.peer_id or "plaintext",
                            self.fwd.target.port, why)
                self.opaque = True
                if self.app is not None:
                    self.close(self.app, abort=True)
                self.transport.abort()
                return
        self.opaque = True
        self.pause(PAUSE_OPAQUE)
        if self.app is not None:
            self.start_pipe()
        elif self.dial_failed:
            self.transport.close()

    def start_pipe(self) -> None:
        conn = self.app
        assert conn is not None
        obs = self.hctx.obs.tcp_start(self.peers, self.peers.destination_workload, self.source,
                                      self.app_addr)
        to_up = [self.buf] if self.buf else []
        self.buf = b""
        self._pipe_to(conn, to_up, self.up_first, obs)

    def start_upgrade(self, conn: UpstreamConn, rest: bytes) -> None:
        self.http = False
        self.current = None
        to_up = [self.upgrade_rest] if self.upgrade_rest else []
        self._pipe_to(conn, to_up, [rest] if rest else [], NULL_TCP)

    def _pipe_to(self, conn: UpstreamConn, to_up: list[bytes], to_client: list[bytes], obs: TcpObs) -> None:
        conn.user = None
        self.app = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        dstats = self.hctx.stats.inbound
        up_n, down_n = sum(map(len, to_up)), sum(map(len, to_client))
        obs.received += up_n
        obs.sent += down_n
        dstats.bytes_up += up_n
        dstats.bytes_down += down_n

        def ended() -> None:
            self.hctx.obs.tcp_end(obs)
            self.done()

        self.pipe = Pipe(self.transport, conn.transport, dstats, self.hctx.config.idle_timeout_s, ended, obs)
        self.paused = 0
        self.pipe.start(to_up, to_client, self.client_eof)


def take_over_inbound(hctx: HttpContext, transport: asyncio.BaseTransport, fwd: Forward, peer: str = "") -> bool:
    """The relay's inbound hook: this module owns every forwarded inbound connection. A client
    sidecar that said HTTP/2 in its ALPN gets the HTTP/2 endpoint at once, without sniffing."""
    t = cast(asyncio.Transport, transport)
    ssl_object = t.get_extra_info("ssl_object")
    if ssl_object is not None and ssl_object.selected_alpn_protocol() == MESH_ALPN_H2:
        source = peername_of(t)
        peers = hctx.obs.inbound(source.rpartition(":")[0], fwd.target.ip, fwd.target.port, peer)
        start_h2_inbound(hctx, t, fwd, peer, peers, b"")
        return True
    InboundConnection(hctx, t, fwd, peer).begin()
    return True


def start_h2_inbound(hctx: HttpContext, transport: asyncio.Transport, fwd: Forward, peer: str, peers: Peers,
                     first: bytes) -> None:
    # Imported on the first HTTP/2 connection: h2 costs a sidecar that never sees one ~4 MB.
    from meshns.dataplane.http2.inbound import InboundTarget  # noqa: PLC0415
    from meshns.dataplane.http2.server import Downstream  # noqa: PLC0415

    target = InboundTarget(hctx, fwd, peer, peers)
    Downstream(hctx, target.make_stream, "inbound").take_over(transport, first)
