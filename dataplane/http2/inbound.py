"""One HTTP/2 request arriving at this pod (from a client sidecar or a plaintext client): check
it, tag it with the caller's identity, pass it to the app over HTTP/2, pass the answer back.

Per stream, as the HTTP/1.1 inbound exchange does per request: the path is normalized when an
AuthorizationPolicy applies (what is checked is what is forwarded), a denied request gets 403
RBAC (a gRPC call: PERMISSION_DENIED) and never reaches the app, client-sent identity headers are
replaced by the verified ones. The app is reached from the inbound source address over an h2
connection pool of its own (``HttpContext.h2_app_pool``); there are no retries on this side, the
client's sidecar owns them, and an app that cannot be reached is answered 503 UF (gRPC:
UNAVAILABLE) so the caller knows the request never ran.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from meshns.dataplane.decide import Forward
from meshns.dataplane.http2.client import ConnectFailed
from meshns.dataplane.http2.conn import Headers
from meshns.dataplane.http2.grpc import grpc_status_of
from meshns.dataplane.http2.stream import Bridge, forwardable, status_of
from meshns.dataplane.inbound_authz import DENIED_HEADER, RBAC_FLAG, deny_http, normalize_target, set_identity_headers
from meshns.dataplane.policy import flags
from meshns.dataplane.tracing import rewrite_trace

if TYPE_CHECKING:
    from meshns.dataplane.http1.context import HttpContext
    from meshns.dataplane.http2.server import Downstream
    from meshns.dataplane.labels import Peers

log = logging.getLogger("meshns.dataplane.http2")


class InboundTarget:
    """What the streams of one inbound connection share: the app's address and the caller."""

    def __init__(self, hctx: HttpContext, fwd: Forward, peer_id: str, peers: Peers) -> None:
        self.hctx = hctx
        self.fwd = fwd
        self.peer_id = peer_id
        self.peers = peers
        self.pool = hctx.h2_app_pool(fwd)

    def make_stream(self, down: Downstream, sid: int, headers: Headers, ended: bool) -> InboundStream:
        return InboundStream(self, down, sid, headers, ended)


class InboundStream(Bridge):
    def __init__(self, target: InboundTarget, down: Downstream, sid: int, headers: Headers, ended: bool) -> None:
        self._init_bridge(down, sid, headers, ended)
        self.target = target
        self.peers = target.peers
        self.endpoint_pod = target.peers.destination_workload
        self.upstream_host = str(target.fwd.target)
        self.replay = None  # never retried here: no copy of the body is kept
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        hctx, target = self.hctx, self.target
        hctx.stats.http_requests += 1
        security = hctx.store.current.snapshot.security
        headers = forwardable(self.headers)
        if security.policies:
            self.path = normalize_target(self.path)
            headers = [(k, self.path if k == b":path" else v) for k, v in headers]
        why = deny_http(security, target.peer_id, target.fwd.target.port, self.method, self.path)
        if why is not None:
            hctx.stats.authz_denied_http += 1
            log.warning("request %s %s from %s (%s) denied: %s", self.method.decode("latin-1"),
                        self.path.decode("latin-1")[:200], self.source_address(), target.peer_id or "plaintext", why)
            self.local_reply(403, RBAC_FLAG, [(DENIED_HEADER, why.encode("ascii", "replace"))])
            return
        set_identity_headers(headers, target.peer_id, security.identity)
        self.request_id = rewrite_trace(headers, hctx.obs.bits, True, new_span=False)
        self.headers = headers
        self.task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        try:
            up = await self.target.pool.acquire(self.target.fwd.target.as_tuple())
        except ConnectFailed as exc:
            log.info("app connect failed %s -> %s: %s", self.source_address(), self.upstream_host, exc)
            self.local_reply(503, flags.UF)
            return
        if self.finished:
            return
        self.tries = 1
        try:
            self.attach(up, self.headers)
        except ConnectionError as exc:
            log.info("no stream to the app %s: %s", self.upstream_host, exc)
            self.local_reply(503, flags.UF)

    # -- the app's response (StreamUser) ------------------------------------------------------

    def up_headers(self, headers: Headers, ended: bool) -> None:
        if self.finished:
            return
        self.status = status_of(headers)
        if ended and self.grpc and (code := grpc_status_of(headers)) is not None:
            self.grpc_status = str(code)
        self.commit_headers(headers, ended)

    def up_data(self, data: bytes, fc_len: int) -> None:
        self.forward_data(data, fc_len)

    def up_trailers(self, headers: Headers) -> None:
        if self.grpc and (code := grpc_status_of(headers)) is not None:
            self.grpc_status = str(code)
        self.resp_trailers = headers

    def up_end(self) -> None:
        if not self.finished:
            self.forward_end()

    def up_reset(self, code: int, refused: bool, protocol_error: bool = False) -> None:
        self.up = None
        if self.finished:
            return
        flag = flags.UPE if protocol_error else flags.UC
        if not self.committed:
            self.local_reply(502 if protocol_error else 503, flag)
            return
        self.upstream_reset_after_commit(code, flag)

    def cancel_task(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def ended(self) -> None:
        self.hctx.stats.inbound.bytes_down += self.resp_body_bytes
        self.hctx.stats.inbound.bytes_up += self.req_body_bytes
