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
from meshns.dataplane.policy.flags import FLAGS_HEADER
from meshns.dataplane.policy.retry import REPLAY_LIMIT_BYTES, Outcome
from meshns.dataplane.policy.state import ServiceState

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

    def pause(self, bit: int) -> None: ...

    def resume(self, bit: int) -> None: ...

    def abort(self) -> None: ...


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
                self.upstream_broken(f"bad response: {exc.reason}")
            else:
                self.pool.close(conn, abort=True)
            return
        if self.out:
            self.flush()
        if rest is not None and conn is self.up:
            self.upgraded(conn, rest)

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
        self.up = None
        self.down.resume(PAUSE_UPSTREAM_FULL)
        self.upstream_broken(f"upstream closed: {exc!r}" if exc else "upstream closed")

    def up_pause(self) -> None:
        self.down.pause(PAUSE_UPSTREAM_FULL)

    def up_resume(self) -> None:
        self.down.resume(PAUSE_UPSTREAM_FULL)

    def upstream_broken(self, why: str) -> None:
        """The attached upstream failed before completing the response."""
        self.detach(abort=True)
        fut = self.try_future
        if not self.committed:
            if fut is not None and not fut.done():
                fut.set_result(Outcome.reset(reused_connection=self.up_reused))
            return
        if not self.resp_complete:
            log.info("upstream failed mid-response (%s); resetting the client", why)
            self.note_flag("UC")
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

    def finish(self, keep_alive: bool) -> None:
        raise NotImplementedError
