"""One request through the server's sidecar to the app: no routing, no retries, one connection.

The inbound counterpart of ``flow.RequestFlow``, on the same byte machinery (``Exchange``): the
request head is rewritten for tracing and serialised, written to the inbound connection's app
connection (dialled or reused by ``InboundConnection``), and the response streams back through
the exchange callbacks. The app's keep-alive decision is passed on: when the app will close its
connection, the client's response says ``Connection: close`` too, so the two stay in step. A
failure before the response head is a local 503 (UF: the app could not be reached; UC: it closed
or reset before answering) or 502 UPE (its answer was not HTTP/1.1, as Envoy answers an upstream
protocol error); after it, the client is reset so a truncated body never looks whole.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from meshns.dataplane.http1.exchange import Discard, Exchange
from meshns.dataplane.http1.flow import grpc_status_of
from meshns.dataplane.http1.head import (
    RequestHead,
    ResponseHead,
    local_response,
    serialize_request,
    serialize_response,
)
from meshns.dataplane.http1.upstream import UpstreamConn
from meshns.dataplane.inbound_authz import (
    DENIED_HEADER,
    RBAC_FLAG,
    deny_http,
    normalize_target,
    set_identity_headers,
)
from meshns.dataplane.policy import flags
from meshns.dataplane.tracing import rewrite_trace

if TYPE_CHECKING:
    from meshns.dataplane.http1.inbound import InboundConnection

log = logging.getLogger("meshns.dataplane.http1.inbound")


class InboundExchange(Exchange):
    down: InboundConnection

    def __init__(self, down: InboundConnection, head: RequestHead) -> None:
        self.down = down
        self.hctx = down.hctx
        self.head = head
        self.pool = down
        self._init_exchange()
        self.replay = None  # never retried: no copy of the body is kept
        self.t0 = time.perf_counter()
        self.peers = down.peers
        self.endpoint_pod = down.peers.destination_workload
        self.upstream_host = down.app_addr
        self.status = 0
        self.grpc_status = ""
        self.request_id = ""
        self.flags: list[str] = []
        self.tries = 0
        self.sent_100 = False

    def start(self) -> None:
        self.hctx.stats.http_requests += 1
        down, head = self.down, self.head
        security = self.hctx.store.current.snapshot.security
        if security.policies:
            head.target = normalize_target(head.target)
        why = deny_http(security, down.peer_id, down.fwd.target.port, head.method, head.target)
        if why is not None:
            self.deny(why)
            return
        set_identity_headers(head.headers, down.peer_id, security.identity)
        # The client's sidecar made this hop's span; a request from outside the mesh gets an id
        # and a trace here.
        self.request_id = rewrite_trace(self.head.headers, self.hctx.obs.bits, True, new_span=False)
        self.request_bytes = serialize_request(self.head, self.down.default_host)
        self.down.want_app(self)

    def app_ready(self, conn: UpstreamConn) -> None:
        self.tries = 1
        self.attach(conn)

    def app_failed(self) -> None:
        self.local_reply(503, flags.UF)

    # response

    def on_response_head(self, rh: ResponseHead) -> None:
        status = rh.status
        if status < 200 and status != 101:
            if status == 100 and self.head.expect_continue and not self.sent_100 and self.head.minor == 1:
                self.sent_100 = True
                self.out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        if status == 101 and not self.head.upgrade:
            self.upstream_broken("101 without an upgrade request", protocol_error=True)
            raise Discard
        self.committed = True
        self.status = status
        self.grpc_status = grpc_status_of(rh.headers)
        head = self.head
        self.resp_keep_alive = rh.keep_alive
        no_body = head.method == b"HEAD" or status in (204, 304) or status == 101
        self.note_body_length(rh.content_length, no_body)  # a long body may be spliced (exchange)
        keep = head.keep_alive and not head.upgrade and (rh.keep_alive or status == 101)
        if no_body or rh.content_length is not None:
            self.chunked_out = False
        elif head.minor == 1:
            self.chunked_out = True
        else:
            self.chunked_out = False
            keep = False
        self.keep_alive = keep
        self.out.append(serialize_response(
            rh, [], chunked=self.chunked_out, close=not keep and status != 101,
            keep_alive_10=keep and head.minor == 0))

    def upgraded(self, conn: UpstreamConn, rest: bytes) -> None:
        self.up = None
        conn.user = None
        self.finished = True
        self.hctx.obs.http_done(self)
        self.down.start_upgrade(conn, rest)

    def upstream_broken(self, why: str, protocol_error: bool = False) -> None:
        if not self.committed:
            self.detach(abort=True)
            if protocol_error:
                self.local_reply(502, flags.UPE)
            else:
                self.local_reply(503, flags.UC)
            return
        super().upstream_broken(why, protocol_error)

    # endings

    def local_reply(self, status: int, flag: str) -> None:
        extra = self.start_local_reply(status, flag)
        if extra is None:
            return
        text = ",".join(self.flags)
        if status == 502:
            reason, why = "Bad Gateway", "the application in this pod answered with something that is not HTTP/1.1"
        else:
            reason, why = "Service Unavailable", "upstream connect error: the application in this pod is not reachable"
        body = b"" if self.head.method == b"HEAD" else f"{why} ({text})\n".encode()
        self.down.transport.write(local_response(status, reason, extra, body, close=True))
        self.finish(False)

    def deny(self, why: str) -> None:
        """403 from an AuthorizationPolicy (or a revoked identity); the app never sees the request.
        The connection closes: the request body, if any, was not read."""
        self.hctx.stats.authz_denied_http += 1
        log.warning("request %s %s from %s (%s) denied: %s", self.head.method.decode("latin-1"),
                    self.head.target.decode("latin-1")[:200], self.down.source, self.down.peer_id or "plaintext", why)
        extra = self.start_local_reply(403, RBAC_FLAG)
        if extra is None:
            return
        extra.append(DENIED_HEADER + b": " + why.encode("ascii", "replace") + b"\r\n")
        body = b"" if self.head.method == b"HEAD" else b"RBAC: access denied\n"
        self.down.transport.write(local_response(403, "Forbidden", extra, body, close=True))
        self.finish(False)

    def finish(self, keep_alive: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self.hctx.stats.inbound.bytes_down += self.resp_body_bytes
        self.hctx.obs.http_done(self)
        self.down.flow_finished(self, keep_alive)

    def downstream_lost(self) -> None:
        if self.finished:
            return
        self.flags.append(flags.DC)
        self.detach(abort=True)
        self.finish(False)

    def source_address(self) -> str:
        return self.down.source
