"""One try of a request on one upstream connection: request bytes out, response bytes back.

``Exchange`` is the byte-moving half of a request flow (``flow.RequestFlow`` adds the decisions).
It is the sink of the upstream connection (``UpstreamUser``) and of the response parser. Request
body chunks are written to the attached upstream transport as they arrive (re-framed when chunked)
and the replay copy keeps references to them while the body stays under the replay limit; before a
try is attached they wait in ``pending`` and the client is paused. Response body chunks go straight
to the client transport. Backpressure pairs the transports: upstream full -> pause the client,
client full -> pause the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final, Protocol

from meshns.dataplane.http1.head import ParseError, RequestHead, ResponseHead
from meshns.dataplane.http1.parser import ResponseParser
from meshns.dataplane.http1.upstream import UpstreamConn
from meshns.dataplane.policy import flags
from meshns.dataplane.policy.flags import FLAGS_HEADER
from meshns.dataplane.policy.retry import REPLAY_LIMIT_BYTES, Outcome
from meshns.dataplane.policy.state import ServiceState
from meshns.dataplane.splice import SPLICE_MIN_BYTES, SplicePump, can_splice, plain_tcp

if TYPE_CHECKING:
    from meshns.dataplane.http1.context import HttpContext

log = logging.getLogger("meshns.dataplane.http1")

CHUNK_END: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
PAUSE_NO_UPSTREAM: Final = 1
PAUSE_UPSTREAM_FULL: Final = 2


class Downstream(Protocol):
    """The client connection an exchange writes to and pauses."""

    transport: asyncio.Transport
    write_paused: bool
    loop: asyncio.AbstractEventLoop

    def pause(self, bit: int) -> None: ...

    def resume(self, bit: int) -> None: ...

    def abort(self) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class ConnOwner(Protocol):
    """Who takes an upstream connection back after a try (a service pool, or the inbound
    connection's single app connection)."""

    def close(self, conn: UpstreamConn, abort: bool = False) -> None: ...

    def release(self, conn: UpstreamConn, reusable: bool) -> None: ...


class Discard(Exception):
    """Raised from a response-head callback to stop parsing a response that will be retried."""


class Exchange:
    request_protocol = "http"  # Istio's request_protocol label (gRPC comes over HTTP/2 only)
    hctx: HttpContext
    down: Downstream
    head: RequestHead
    state: ServiceState
    pool: ConnOwner
    flags: list[str]
    status: int

    def _init_exchange(self) -> None:
        self.up: UpstreamConn | None = None
        self.parser: ResponseParser | None = None
        self.pending: list[bytes] = []
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.req_complete = False
        self.committed = False
        self.resp_complete = False
        self.chunked_out = False
        self.keep_alive = False
        self.try_future: asyncio.Future[Outcome | None] | None = None
        self.got_bytes = False
        self.up_reused = False
        self.finished = False
        self.request_bytes = b""
        self.req_body_bytes = 0
        self.resp_body_bytes = 0
        # Bytes for the client produced while parsing one upstream read, written with one
        # writelines after it: head and body of a small response leave in one syscall.
        self.out: list[bytes] = []
        # A response body long enough to move in the kernel (see splice_body): its length while
        # the first upstream read is parsed, and the pump while it runs.
        self.splice_len: int | None = None
        self.splice: SplicePump | None = None

    def request_line(self) -> tuple[str, str, str, str]:
        head = self.head
        return (head.method.decode("latin-1"), head.target.decode("latin-1"),
                head.host.decode("latin-1") if head.host is not None else "", f"HTTP/1.{head.minor}")

    # request body, from the client

    def request_body(self, data: bytes) -> None:
        self.req_body_bytes += len(data)
        replay = self.replay
        if replay is not None:
            if self.replay_size + len(data) <= REPLAY_LIMIT_BYTES:
                replay.append(data)
                self.replay_size += len(data)
            else:
                self.replay = None  # too big to replay: the copy is dropped, retries are off
        up = self.up
        if up is not None:
            if self.head.chunked:
                up.transport.writelines((b"%x\r\n" % len(data), data, CHUNK_END))
            else:
                up.transport.write(data)
        elif not self.finished:
            self.pending.append(data)
            self.down.pause(PAUSE_NO_UPSTREAM)

    def request_complete(self) -> None:
        self.req_complete = True
        up = self.up
        if up is not None and self.head.chunked:
            up.transport.write(LAST_CHUNK)

    # attaching a try

    def attach(self, up: UpstreamConn) -> None:
        self.up = up
        up.user = self
        self.got_bytes = False
        self.up_reused = up.requests > 0
        up.requests += 1
        up.head_next = True  # its first read is short: a long body stays for splice (upstream.HEAD_READ)
        head_request = self.head.method == b"HEAD"
        parser = up.parser
        if parser is None or not parser.rearm(self, head_request, self.head.upgrade):
            parser = up.parser = self.hctx.kit.response(self, head_request, self.head.upgrade)
        self.parser = parser
        body = self.replay if self.replay is not None else self.pending
        t = up.transport
        out = [self.request_bytes]
        if self.head.chunked:
            for chunk in body:
                out += (b"%x\r\n" % len(chunk), chunk, CHUNK_END)
            if self.req_complete:
                out.append(LAST_CHUNK)
        else:
            out += body
        t.writelines(out)
        self.pending = []
        self.down.resume(PAUSE_NO_UPSTREAM)
        if self.down.write_paused:
            t.pause_reading()

    def detach(self, abort: bool) -> None:
        if self.splice is not None:
            self.stop_splice()  # its duplicated fds would keep both sockets open
        up = self.up
        if up is not None:
            self.up = None
            self.down.resume(PAUSE_UPSTREAM_FULL)
            self.pool.close(up, abort=abort)

    # UpstreamUser

    def up_data(self, conn: UpstreamConn, data: bytes) -> None:
        self.got_bytes = True
        parser = self.parser
        assert parser is not None
        try:
            rest = parser.feed(data)
        except Discard:
            return
        except ParseError as exc:
            self.flush()
            if conn is self.up:
                self.upstream_broken(f"bad response: {exc.reason}", protocol_error=True)
            else:
                self.pool.close(conn, abort=True)
            return
        if self.out:
            self.flush()
        if rest is not None and conn is self.up:
            self.upgraded(conn, rest)
        elif self.splice_len is not None and conn is self.up:
            self.splice_body(conn)

    def flush(self) -> None:
        out = self.out
        if out:
            self.down.transport.writelines(out)
            out.clear()

    def up_eof(self, conn: UpstreamConn) -> None:
        if conn is not self.up or self.parser is None:
            return
        with contextlib.suppress(ParseError):  # connection_lost follows and decides
            self.parser.feed_eof()

    def up_lost(self, conn: UpstreamConn, exc: Exception | None) -> None:
        if conn is not self.up:
            return
        if self.splice is not None:
            self.stop_splice()
        self.up = None
        self.down.resume(PAUSE_UPSTREAM_FULL)
        self.upstream_broken(f"upstream closed: {exc!r}" if exc else "upstream closed")

    def up_pause(self) -> None:
        self.down.pause(PAUSE_UPSTREAM_FULL)

    def up_resume(self) -> None:
        self.down.resume(PAUSE_UPSTREAM_FULL)

    def upstream_broken(self, why: str, protocol_error: bool = False) -> None:
        """The attached upstream failed before completing the response: it closed or reset, or
        (``protocol_error``) what it sent is not a response it could have meant, which Envoy
        tells apart as 502 UPE."""
        self.detach(abort=True)
        fut = self.try_future
        if not self.committed:
            if fut is not None and not fut.done():
                fut.set_result(Outcome.protocol_error() if protocol_error
                               else Outcome.reset(reused_connection=self.up_reused))
            return
        if not self.resp_complete:
            log.info("upstream failed mid-response (%s); resetting the client", why)
            self.note_flag(flags.UPE if protocol_error else flags.UC)
            self.down.abort()

    def note_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def start_local_reply(self, status: int, flag: str) -> list[bytes] | None:
        """The common start of a response the sidecar makes itself: counted and flagged; returns
        the flags header line, or None when a response was already started (the client is reset)."""
        self.hctx.stats.http_local_replies += 1
        if self.committed:
            self.down.abort()
            return None
        self.committed = True
        self.status = status
        self.flags.append(flag)
        return [b"%s: %s\r\n" % (FLAGS_HEADER.encode(), ",".join(self.flags).encode())]

    # hooks the flow implements

    def upgraded(self, conn: UpstreamConn, rest: bytes) -> None:
        raise NotImplementedError

    def on_response_head(self, rh: ResponseHead) -> None:
        raise NotImplementedError

    # response body, to the client

    def on_response_body(self, data: bytes) -> None:
        if self.chunked_out:
            self.out += (b"%x\r\n" % len(data), data, CHUNK_END)
        else:
            self.out.append(data)
        self.resp_body_bytes += len(data)

    def on_response_complete(self) -> None:
        if not self.committed or self.resp_complete:
            return
        self.resp_complete = True
        if self.chunked_out:
            self.out.append(LAST_CHUNK)
        self.flush()
        up = self.up
        if up is not None:
            self.up = None
            self.down.resume(PAUSE_UPSTREAM_FULL)
            self.pool.release(up, self.resp_keep_alive and self.req_complete)
        self.finish(self.keep_alive and self.req_complete)

    resp_keep_alive = False

    # a long response body, moved by the kernel (dataplane.splice)

    def note_body_length(self, length: int | None, no_body: bool) -> None:
        """At commit: a Content-Length body that may be long enough to splice is looked at once
        the upstream read carrying the head has been parsed (``up_data``)."""
        if length is not None and length >= SPLICE_MIN_BYTES and not no_body:
            self.splice_len = length

    def splice_body(self, conn: UpstreamConn) -> None:
        """The head and the body bytes of this read were written (``flush``); when both sockets
        are plain TCP and enough of the body is left, the rest moves socket to socket in the
        kernel. The upstream transport stops reading (so uvloop takes no more of its bytes) and
        its parser is dropped: it stays mid-body, the next exchange on the connection gets a
        new one. Otherwise the ordinary path goes on."""
        length, self.splice_len = self.splice_len, None
        assert length is not None
        remaining = length - self.resp_body_bytes
        down = self.down.transport
        if self.resp_complete or not can_splice(
                src_plain=plain_tcp(conn.transport), dst_plain=plain_tcp(down) and not down.is_closing(),
                length_framed=True, reframed=self.chunked_out, remaining=remaining):
            return
        conn.transport.pause_reading()
        conn.parser = None
        try:
            pump = SplicePump(self.down.loop, self, conn.transport, down, remaining)
        except OSError as exc:  # out of fds: the ordinary path still works
            log.info("splice not started: %r", exc)
            conn.parser = self.parser
            if not self.down.write_paused:
                conn.transport.resume_reading()
            return
        self.splice = pump
        self.hctx.stats.http_spliced += 1
        pump.start()

    def stop_splice(self) -> None:
        pump = self.splice
        assert pump is not None
        self.splice = None
        pump.stop()
        self.resp_body_bytes += pump.moved
        if pump.blocked:
            self.down.write_paused = False

    def splice_done(self, pump: SplicePump) -> None:
        """All of the body went: what the parser's completion does (the connection back to its
        owner, which resumes its reading; the next pipelined request)."""
        self.splice = None
        self.resp_body_bytes += pump.moved
        self.on_response_complete()

    def splice_src_failed(self, pump: SplicePump, why: str) -> None:
        """The upstream ended mid-body: what its connection_lost does (never pooled; the client
        is reset, so a truncated body never looks whole)."""
        self.splice = None
        self.resp_body_bytes += pump.moved
        self.upstream_broken(why)

    def splice_dst_failed(self, pump: SplicePump, why: str) -> None:
        """The client is gone: its transport is aborted, and its connection_lost ends the
        exchange as on the ordinary path (the upstream aborted, not pooled)."""
        self.splice = None
        self.resp_body_bytes += pump.moved
        log.debug("splice to the client failed: %s", why)
        self.down.abort()

    def splice_blocked(self, blocked: bool) -> None:
        # The client's socket full / draining: the client connection's own backpressure
        # bookkeeping, so a client that reads nothing is still cut at its idle timeout.
        if blocked:
            self.down.pause_writing()
        else:
            self.down.resume_writing()

    def finish(self, keep_alive: bool) -> None:
        raise NotImplementedError
