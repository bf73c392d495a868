"""The life of one HTTP request in the client's sidecar: route, fault, breaker, tries, response.

Theory of operation
-------------------
A ``RequestFlow`` is made when the client's request head has been parsed. Everything that needs a
decision happens once per request, in ``start`` and the ``run`` task; bytes move in callbacks
(``exchange.Exchange``) and never wait for the task.

    start   look the service up in the snapshot current *now* (a reload never touches a request
            already running), match a route (none: 404 NR), draw the fault (abort: its status, FI)
    run     fault delay (DI), breaker.try_start_request (full: 503 UO), pick the weighted
            destination, then tries until one commits or the policy says stop, all under the
            route timeout (504 UT while nothing was sent to the client)
    try     choose_endpoint (not the ones already tried while others exist; ejected ones are
            skipped), pool.acquire (idle keep-alive connection, or a new one within the
            connect timeout, or wait as pending), write head + replay copy, wait for the
            outcome under the per-try timeout

A try ends in an ``Outcome``: connect_failure, reset (closed before a complete response head;
``reused_connection`` says whether the keep-alive connection had served requests before, which
the policy treats as Envoy's refused-stream: a stale pooled connection is retried under the normal
attempts and budget, not beyond them), timeout (per-try), or status (a response head). A status
is decided synchronously in the head callback, because its body bytes follow in the same read:
either the response is retried (parsing stops, the connection is closed, the body is never seen)
or it is committed (head written to the client; from then on no retry is possible). Every outcome
is recorded in the outlier detector.

When the tries are exhausted the last upstream response was already committed (a 5xx with its
attempts header), or, with no response at all, the client gets 503 URX after retries, else 503 UF
(connect failure), 504 UT (per-try timeout), 503 UC (reset) or 502 UPE (a response that broke
HTTP/1.1, a 101 nobody asked for included: Envoy's protocol error). After the response head was sent
the route timeout still runs (Envoy's route timeout covers the whole response): firing then
resets the client so a truncated body never looks complete.

``Expect: 100-continue`` is forwarded and the upstream decides: its 100 is relayed (once), and we
never invent one, so a server that rejects the upload early is heard before the body is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from meshns.dataplane.http1.exchange import Discard, Exchange
from meshns.dataplane.http1.head import ResponseHead, local_response, serialize_request, serialize_response
from meshns.dataplane.http1.upstream import ConnectFailed, PoolOverflow, ServicePool, UpstreamConn
from meshns.dataplane.labels import UNKNOWN
from meshns.dataplane.policy import flags
from meshns.dataplane.policy.attempts import Attempts
from meshns.dataplane.policy.fault import decide_fault
from meshns.dataplane.policy.retry import Outcome
from meshns.dataplane.policy.route import match_route, pick_weighted
from meshns.dataplane.policy.state import choose_endpoint
from meshns.dataplane.tracing import rewrite_trace
from meshns.snapshot import HttpRoute, Service

if TYPE_CHECKING:
    from meshns.dataplane.http1.context import HttpContext
    from meshns.dataplane.http1.downstream import ServiceConnection
    from meshns.dataplane.http1.head import RequestHead

log = logging.getLogger("meshns.dataplane.http1")

_REASONS = {404: "Not Found", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
GRPC_STATUS = b"grpc-status"


def grpc_status_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The grpc-status header's value, "" without one (a length test first keeps it cheap)."""
    for name, value in headers:
        if len(name) == 11 and name.lower() == GRPC_STATUS:
            return value.decode("latin-1").strip()
    return ""


def _headers_map(head: RequestHead) -> dict[str, str]:
    return {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in head.headers}


class RequestFlow(Attempts, Exchange):
    down: ServiceConnection
    pool: ServicePool

    def __init__(self, down: ServiceConnection, head: RequestHead) -> None:
        self.down = down
        self.hctx: HttpContext = down.hctx
        self.rand = self.hctx.rand
        self.head = head
        self._init_exchange()
        # What the observer reads when the request ends (observe.HttpRecord).
        self.t0 = time.perf_counter()
        self.peers = down.peers
        self.endpoint_pod = UNKNOWN
        self.upstream_host = "-"
        self.status = 0
        self.grpc_status = ""
        self.request_id = ""
        self.flags: list[str] = []
        self.tries = 0
        self.try_ip: str | None = None
        self.retrying = False
        self.holding = False
        self.task: asyncio.Task[None] | None = None
        # A try begun by start_now, until its outcome: (route, subset, endpoints tried, its
        # endpoint, per-try timer).
        self.now_try: tuple[HttpRoute, str | None, set[str], str, asyncio.TimerHandle | None] | None = None
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.sent_100 = False
        self.route: HttpRoute | None = None

    # decisions

    def start(self) -> None:
        down, head = self.down, self.head
        service: Service = self.hctx.store.lookup(*down.dst) or down.service
        self.service = service
        self.state, self.pool = self.hctx.policy(service)
        self.state.requests += 1
        self.hctx.stats.http_requests += 1
        self.request_id = rewrite_trace(head.headers, self.hctx.obs.bits, True)
        self.request_bytes = serialize_request(head, down.default_host)
        routes = service.routes
        need_headers = any(m.headers for r in routes for m in r.matches)
        route = match_route(routes, head.method.decode("latin-1"), head.target.decode("latin-1"),
                            _headers_map(head) if need_headers else {})
        if route is None:
            self.local_reply(404, flags.NR)
            return
        self.route = route
        delay_s, abort = decide_fault(route.fault, self.hctx.rand(), self.hctx.rand())
        if abort is not None:
            self.local_reply(abort, flags.FI)
            return
        if delay_s is None and route.timeout_s is None:
            self.down.start_after_feed(self, route)
        else:
            self.task = asyncio.ensure_future(self.run(route, delay_s))

    def start_now(self, route: HttpRoute) -> None:
        """``run`` without a task for the common case (no fault delay, no route timeout): the
        first try begins here, and on a connection at hand (the eager one, or an idle pooled one)
        its request is written before this returns; the try's outcome arrives by callback
        (``_now_done``). A task is made only when there is something to wait for: a connection
        to dial or wait for, or a retry after a failed first try. Same decisions, same order."""
        state = self.state
        if not state.breaker.try_start_request():
            state.overflows += 1
            self.local_reply(503, flags.UO)
            return
        self.holding = True
        state.active_requests += 1
        rand = self.rand
        subset = pick_weighted(route.destinations, rand()).subset
        service = self.service
        port = service.target_port(self.dst_port())
        tried: set[str] = set()
        loop = self.down.loop
        ep = choose_endpoint(service, state, subset, tried, loop.time(), rand, self.prefer_ip())
        if ep is None or port is None:
            self.fail(None, flags.UH)
            return
        key = self.begin_try(ep.ip, ep.pod, port, tried)
        up = self.down.claim_now(key)
        if up is None:
            self.task = asyncio.ensure_future(self.tries_loop(route, subset, tried, key))
            return
        fut = self.new_try()
        self.attach(up)
        per_try = route.retries.per_try_timeout_s
        handle = loop.call_later(per_try, self.try_timed_out, fut) if per_try else None
        self.now_try = (route, subset, tried, key[0], handle)
        fut.add_done_callback(self._now_done)

    def _now_done(self, fut: asyncio.Future[Outcome | None]) -> None:
        """The outcome of a try begun by ``start_now`` (what ``try_outcome`` and ``tries_loop``
        do after their await): committed, or go on with the tries in a task."""
        now = self.now_try
        if now is None:
            return
        self.now_try = None
        route, subset, tried, ip, handle = now
        if handle is not None:
            handle.cancel()
        if self.try_future is fut:
            self.try_future = None
        if fut.cancelled():
            return
        outcome = fut.result()
        if outcome is None or self.finished:
            return
        if self.after_outcome(ip, outcome):
            self.task = asyncio.ensure_future(self.tries_loop(route, subset, tried, last=outcome))

    def stop_now_try(self) -> None:
        """The client is gone (or refused mid-request): a try begun by ``start_now`` is let go
        (as cancelling ``run``'s task does: the caller detaches its upstream)."""
        now = self.now_try
        if now is None:
            return
        self.now_try = None
        if now[4] is not None:
            now[4].cancel()
        fut = self.try_future
        self.try_future = None
        if fut is not None and not fut.done():
            fut.cancel()

    async def run(self, route: HttpRoute, delay_s: float | None) -> None:
        state = self.state
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
        loop = asyncio.get_running_loop()
        deadline = None if route.timeout_s is None else loop.time() + route.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await self.tries_loop(route, dest.subset)
        except TimeoutError:
            state.timeouts += 1
            self.detach(abort=True)
            self.end_try()
            if self.committed:
                self.late_timeout()
            else:
                self.local_reply(504, flags.UT)
            return
        if deadline is not None and self.committed and not self.finished:
            self.deadline_handle = loop.call_at(deadline, self.late_timeout)

    def running_loop(self) -> asyncio.AbstractEventLoop:
        return self.down.loop

    def dst_port(self) -> int:
        return self.down.dst[1]

    def prefer_ip(self) -> str | None:
        return self.down.eager_ip()

    async def one_try(self, key: tuple[str, int], route: HttpRoute) -> Outcome | None:
        try:
            up = await self.down.claim_eager(key) or await self.pool.acquire(key)
        except ConnectFailed as exc:
            log.info("connect failed to %s:%d: %s", key[0], key[1], exc)
            return Outcome.connect_failure()
        except PoolOverflow:
            self.end_try()
            self.state.overflows += 1
            self.local_reply(503, flags.UO)
            return None
        fut = self.new_try()
        self.attach(up)
        return await self.try_outcome(fut, route)

    def abandon_try(self) -> None:
        self.detach(abort=True)

    def local_failure(self, status: int, flag: str) -> None:
        self.local_reply(status, flag)

    def method_name(self) -> str:
        return self.head.method.decode("latin-1")

    # the response head, from the upstream

    def on_response_head(self, rh: ResponseHead) -> None:
        status = rh.status
        if status < 200 and status != 101:
            if status == 100 and self.head.expect_continue and not self.sent_100 and self.head.minor == 1:
                self.sent_100 = True
                self.out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
            return  # other 1xx are dropped (1.0 clients cannot take them; 103 is only a hint)
        fut = self.try_future
        if status == 101:
            if not self.head.upgrade:
                self.upstream_broken("101 without an upgrade request", protocol_error=True)
                raise Discard
            self.commit(rh)
        else:
            outcome = Outcome.status(status)
            if self.try_ip is not None:
                self.record(self.try_ip, outcome)
            if status >= 400 and self.decide_retry(outcome):
                self.detach(abort=True)
                if fut is not None and not fut.done():
                    fut.set_result(outcome)
                raise Discard
            self.commit(rh)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def commit(self, rh: ResponseHead) -> None:
        self.committed = True
        self.status = rh.status
        self.grpc_status = grpc_status_of(rh.headers)
        self.release_retry()
        head = self.head
        self.resp_keep_alive = rh.keep_alive
        no_body = head.method == b"HEAD" or rh.status in (204, 304) or rh.status == 101
        self.note_body_length(rh.content_length, no_body)  # a long body may be spliced (exchange)
        keep = head.keep_alive and not head.upgrade
        if no_body or rh.content_length is not None:
            self.chunked_out = False
        elif head.minor == 1:
            self.chunked_out = True
        else:
            self.chunked_out = False
            keep = False  # close-delimited to an HTTP/1.0 client
        self.keep_alive = keep
        extra = [b"%s: %d\r\n" % (flags.ATTEMPTS_HEADER.encode(), self.tries)]
        if self.flags:
            extra.append(b"%s: %s\r\n" % (flags.FLAGS_HEADER.encode(), ",".join(self.flags).encode()))
        self.out.append(serialize_response(
            rh, extra, chunked=self.chunked_out, close=not keep and rh.status != 101,
            keep_alive_10=keep and head.minor == 0))

    def upgraded(self, conn: UpstreamConn, rest: bytes) -> None:
        self.up = None
        conn.user = None
        self.end_try()
        self.release_retry()
        self.release_request()
        self.finished = True
        self.hctx.obs.http_done(self)
        self.down.start_upgrade(conn, self.pool, rest)

    # endings

    def local_reply(self, status: int, flag: str) -> None:
        extra = self.start_local_reply(status, flag)
        if extra is None:
            return
        if self.tries:
            extra.append(b"%s: %d\r\n" % (flags.ATTEMPTS_HEADER.encode(), self.tries))
        head = self.head
        body_done = self.req_complete or (not head.chunked and not head.content_length)
        keep = head.keep_alive and body_done and head.minor == 1 and not head.upgrade
        reason = _REASONS.get(status, "Fault Injected" if flag == flags.FI else "Error")
        body = f"meshns: {reason.lower()} ({','.join(self.flags)})\n".encode()
        if self.head.method == b"HEAD":
            body = b""
        self.down.transport.write(local_response(status, reason, extra, body, close=not keep))
        self.finish(keep)

    def late_timeout(self) -> None:
        if self.finished:
            return
        self.flags.append(flags.UT)
        self.state.timeouts += 1
        self.detach(abort=True)
        self.down.abort()

    def release_request(self) -> None:
        if self.holding:
            self.holding = False
            self.state.breaker.end_request()
            self.state.active_requests -= 1
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None

    def finish(self, keep_alive: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self.end_try()
        self.release_retry()
        self.release_request()
        self.hctx.stats.outbound.bytes_down += self.resp_body_bytes
        self.hctx.obs.http_done(self)
        self.down.flow_finished(self, keep_alive)

    def source_address(self) -> str:
        return self.down.source_address()

    def downstream_lost(self) -> None:
        if self.finished:
            return
        self.flags.append(flags.DC)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.stop_now_try()
        self.detach(abort=True)
        self.finish(False)
