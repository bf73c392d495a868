"""One HTTP/2 request (a gRPC call) from the pod's app to a service: route, tries, response.

The decisions are the HTTP/1.1 flow's (``http1.flow``) applied per stream: the service is looked
up in the snapshot current now, a route matched on method, path and headers (none: 404 NR), the
fault drawn, the breaker asked, a weighted destination picked, then tries on endpoints chosen by
the balancer (so one client connection spreads its streams over every endpoint), all under the
route timeout. ``grpc-timeout`` is honoured: the call's deadline is the smaller of it and the
route timeout, and the header sent upstream carries what is left of it at each try.

A try ends in an ``Outcome`` as over HTTP/1.1. What is new is gRPC: its status is in the
trailers, after the response headers, and the call may be retried only while no response
message has reached the client. So a gRPC response's headers are held until its first DATA
frame (commit: no retry from here) or its trailers (a status with no message: retryable,
exactly like a Trailers-Only response). Outlier detection sees a gRPC status as the HTTP code
gRPC maps it to (UNAVAILABLE as 503), as Envoy does.

Errors the sidecar makes itself answer a gRPC call as gRPC (Trailers-Only, grpc-status and a
grpc-message starting "meshns:"), and any other request with a plain HTTP status and body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from meshns.dataplane.http2.client import ConnectFailed
from meshns.dataplane.http2.conn import CANCEL, Headers
from meshns.dataplane.http2.grpc import (
    format_grpc_timeout,
    grpc_status_of,
    header,
    parse_grpc_timeout,
)
from meshns.dataplane.http2.stream import Bridge, forwardable, status_of
from meshns.dataplane.policy import flags
from meshns.dataplane.policy.attempts import Attempts
from meshns.dataplane.policy.fault import decide_fault
from meshns.dataplane.policy.retry import Outcome
from meshns.dataplane.policy.route import match_route, pick_weighted
from meshns.dataplane.tracing import rewrite_trace
from meshns.snapshot import HttpRoute, Service

if TYPE_CHECKING:
    from meshns.dataplane.http1.context import HttpContext
    from meshns.dataplane.http2.server import Downstream
    from meshns.dataplane.labels import Peers

log = logging.getLogger("meshns.dataplane.http2")

# gRPC status -> the HTTP status it stands for (grpc-go / Envoy's grpcToHttpStatus), for
# outlier detection and retry conditions written in HTTP terms.
# REFUSED_STREAM, or a stream above a GOAWAY's last-stream-id: never processed. The policy's
# "refused-stream" outcome (retry.py: a reset that provably did not reach the application).
REFUSED = Outcome.reset(reused_connection=True)
_GRPC_AS_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400,
                 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


class OutboundTarget:
    """What the streams of one client connection share: the service and VIP they were sent to."""

    def __init__(self, hctx: HttpContext, service: Service, dst: tuple[str, int], peers: Peers) -> None:
        self.hctx = hctx
        self.service = service
        self.dst = dst
        self.peers = peers

    def make_stream(self, down: Downstream, sid: int, headers: Headers, ended: bool) -> OutboundStream:
        return OutboundStream(self, down, sid, headers, ended)


class OutboundStream(Attempts, Bridge):
    def __init__(self, target: OutboundTarget, down: Downstream, sid: int, headers: Headers, ended: bool) -> None:
        self._init_bridge(down, sid, headers, ended)
        self.target = target
        self.rand = self.hctx.rand
        self.peers = target.peers
        self.service = target.service
        self.route: HttpRoute | None = None
        self.task: asyncio.Task[None] | None = None
        self.try_future: asyncio.Future[Outcome | None] | None = None
        self.try_ip: str | None = None
        self.held: Headers | None = None
        self.retrying = False
        self.holding = False
        self.deadline: float | None = None
        self.deadline_handle: asyncio.TimerHandle | None = None

    # -- decisions ----------------------------------------------------------------------------

    def start(self) -> None:
        hctx = self.hctx
        service = hctx.store.lookup(*self.target.dst) or self.target.service
        self.service = service
        self.state, self.pool = hctx.policy(service)[0], hctx.h2_pool(service)
        self.state.requests += 1
        hctx.stats.http_requests += 1
        self.headers = forwardable(self.headers)
        self.request_id = rewrite_trace(self.headers, hctx.obs.bits, True)
        routes = service.routes
        need = any(m.headers for r in routes for m in r.matches)
        hmap = ({k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers if not k.startswith(b":")}
                if need else {})
        route = match_route(routes, self.method.decode("latin-1"), self.path.decode("latin-1"), hmap)
        if route is None:
            self.local_reply(404, flags.NR)
            return
        self.route = route
        delay_s, abort = decide_fault(route.fault, hctx.rand(), hctx.rand())
        if abort is not None:
            self.local_reply(abort, flags.FI)
            return
        loop = asyncio.get_running_loop()
        limit = route.timeout_s
        asked = parse_grpc_timeout(header(self.headers, b"grpc-timeout") or b"") if self.grpc else None
        if asked is not None:
            limit = asked if limit is None else min(limit, asked)
        self.deadline = None if limit is None else loop.time() + limit
        self.task = asyncio.ensure_future(self.run(route, delay_s))

    async def run(self, route: HttpRoute, delay_s: float | None) -> None:
        state = self.state
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(self.deadline):
                if delay_s is not None:
                    self.flags.append(flags.DI)
                    await asyncio.sleep(delay_s)
                if not state.breaker.try_start_request():
                    state.overflows += 1
                    self.local_reply(503, flags.UO)
                    return
                self.holding = True
                state.active_requests += 1
                dest = pick_weighted(route.destinations, self.hctx.rand())
                await self.tries_loop(route, dest.subset)
        except TimeoutError:
            state.timeouts += 1
            self.detach(cancel=True)
            self.end_try()
            if self.committed:
                self.late_timeout()
            else:
                self.local_reply(504, flags.UT)
            return
        if self.deadline is not None and self.committed and not self.finished:
            self.deadline_handle = loop.call_at(self.deadline, self.late_timeout)

    def dst_port(self) -> int:
        return self.target.dst[1]

    async def one_try(self, key: tuple[str, int], route: HttpRoute) -> Outcome | None:
        try:
            up = await self.pool.acquire(key)
        except ConnectFailed as exc:
            log.info("connect failed to %s:%d: %s", key[0], key[1], exc)
            return Outcome.connect_failure()
        self.held = None
        try:
            self.attach(up, self.try_headers())
        except ConnectionError as exc:
            log.info("no stream on %s:%d: %s", key[0], key[1], exc)
            return REFUSED  # nothing was sent: as safe to retry as REFUSED_STREAM
        return await self.try_outcome(self.new_try(), route)

    def abandon_try(self) -> None:
        self.detach(cancel=True)

    def try_headers(self) -> Headers:
        """The request headers of this try: grpc-timeout is what is left of the deadline."""
        if not self.grpc or self.deadline is None:
            return self.headers
        left = max(self.deadline - asyncio.get_running_loop().time(), 0.0)
        out = [(k, v) for k, v in self.headers if k != b"grpc-timeout"]
        out.append((b"grpc-timeout", format_grpc_timeout(left)))
        return out

    def settle(self, outcome: Outcome | None) -> None:
        fut = self.try_future
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    def local_failure(self, status: int, flag: str) -> None:
        self.local_reply(status, flag)

    def method_name(self) -> str:
        return self.method.decode("latin-1")

    # -- the response (StreamUser) ------------------------------------------------------------

    def up_headers(self, headers: Headers, ended: bool) -> None:
        if self.finished:
            return
        status = status_of(headers)
        if ended:  # no body: a Trailers-Only gRPC response, or an empty HTTP one
            self.resp_trailers = None
            if self.decided(status, grpc_status_of(headers) if self.grpc else None, headers):
                self.commit_headers(self.with_attempts(headers), True)
                self.settle(None)
            return
        if self.grpc and status == 200:
            self.held = headers  # the status is in the trailers; decide there or at the first message
            return
        if self.decided(status, None, headers):
            self.commit_headers(self.with_attempts(headers), False)
            self.settle(None)

    def decided(self, status: int, grpc: int | None, headers: Headers) -> bool:
        """Record the try's outcome; True to pass the response on, False when it is retried."""
        if grpc is not None:
            self.grpc_status = str(grpc)
        outcome = Outcome.status(status, grpc)
        if self.try_ip is not None:
            seen = Outcome.status(_GRPC_AS_HTTP.get(grpc, 500)) if grpc is not None and status == 200 else outcome
            self.record(self.try_ip, seen)
        if (status >= 400 or (grpc is not None and grpc != 0)) and self.decide_retry(outcome):
            self.detach(cancel=True)
            self.settle(outcome)
            return False
        self.release_retry()
        self.status = status
        return True

    def with_attempts(self, headers: Headers) -> Headers:
        out = list(headers)
        out.append((flags.ATTEMPTS_HEADER.encode(), str(self.tries).encode()))
        if self.flags:
            out.append((flags.FLAGS_HEADER.encode(), ",".join(self.flags).encode()))
        return out

    def up_data(self, data: bytes, fc_len: int) -> None:
        held = self.held
        if held is not None and not self.finished:  # the first message: committed, no retry from here
            self.held = None
            if self.decided(200, None, held):
                self.commit_headers(self.with_attempts(held), False)
            self.settle(None)
        self.forward_data(data, fc_len)

    def up_trailers(self, headers: Headers) -> None:
        if self.finished:
            return
        grpc = grpc_status_of(headers)
        held = self.held
        if held is not None:  # trailers without a message: the call may still be retried
            self.held = None
            if not self.decided(200, grpc, headers):
                return
            self.commit_headers(self.with_attempts(held), False)
            self.settle(None)
        elif grpc is not None:
            self.grpc_status = str(grpc)
        self.resp_trailers = headers

    def up_end(self) -> None:
        if self.finished or (not self.committed and self.held is None and self.try_future is None):
            return
        held = self.held
        if held is not None:
            self.held = None
            if self.decided(200, None, held):
                self.commit_headers(self.with_attempts(held), False)
        self.settle(None)
        if self.committed and not self.finished:
            self.end_try()
            self.forward_end()

    def up_reset(self, code: int, refused: bool, protocol_error: bool = False) -> None:
        self.up = None
        if self.finished:
            return
        if not self.committed:
            self.held = None
            self.settle(REFUSED if refused else Outcome.protocol_error() if protocol_error else Outcome.reset())
            return
        self.upstream_reset_after_commit(code, flags.UPE if protocol_error else flags.UC)

    # -- endings ------------------------------------------------------------------------------

    def late_timeout(self) -> None:
        """The route deadline passed after the response began: cut both sides."""
        if self.finished:
            return
        self.flags.append(flags.UT)
        self.state.timeouts += 1
        self.detach(cancel=True)
        self.reset_client(CANCEL)

    def cancel_task(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def ended(self) -> None:
        self.end_try()
        self.release_retry()
        if self.holding:
            self.holding = False
            self.state.breaker.end_request()
            self.state.active_requests -= 1
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None
        self.hctx.stats.outbound.bytes_down += self.resp_body_bytes
        self.hctx.stats.outbound.bytes_up += self.req_body_bytes

