"""The byte-moving half of one HTTP/2 request: a downstream stream bridged to an upstream stream.

``Bridge`` is shared by the outbound handler (routing, retries, timeouts: ``outbound``) and the
inbound one (authorization, identity headers: ``inbound``); they decide, it moves.

Request body: DATA from the client goes to the attached try's stream as it arrives and is
acknowledged to the client only once framed upstream (end-to-end flow control). Before a try is
attached it waits in ``pending`` (bounded by our stream window, since it is not acknowledged).
A copy is kept for replay while the body stays under ``REPLAY_LIMIT_BYTES``; a retry resends
the copy, and a body that outgrew it makes the request not replayable (``replay`` is None).

Response: the upstream's headers, DATA and trailers are passed on in order, DATA acknowledged
upstream once framed downstream. ``committed`` turns true when the first response byte goes
to the client: from then on the request can no longer be retried.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from meshns.dataplane.http2.client import Upstream
from meshns.dataplane.http2.conn import CANCEL, INTERNAL_ERROR, Headers
from meshns.dataplane.http2.grpc import header, is_grpc, local_grpc_status, trailers_only_response
from meshns.dataplane.labels import UNKNOWN, Peers
from meshns.dataplane.policy import flags
from meshns.dataplane.policy.retry import REPLAY_LIMIT_BYTES

if TYPE_CHECKING:
    from meshns.dataplane.http1.context import HttpContext
    from meshns.dataplane.http2.server import Downstream

log = logging.getLogger("meshns.dataplane.http2")

# What a locally made answer says, by its response flag (Envoy's wording where Envoy has one).
_REASONS = {"UH": "no healthy upstream", "UF": "upstream connect failure", "UO": "upstream overflow",
            "URX": "retries exhausted", "UT": "upstream request timeout", "UC": "upstream connection reset",
            "UPE": "upstream protocol error",
            "NR": "no route", "FI": "fault injected", "RBAC": "access denied"}
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


def status_of(headers: Headers) -> int:
    """The response's ``:status`` (502 when missing or malformed: the upstream broke HTTP)."""
    value = header(headers, b":status") or b""
    return int(value) if value.isdigit() else 502


def forwardable(headers: Headers) -> Headers:
    """Request headers as sent upstream: h2 rejected connection-specific ones on the way in;
    ``te`` may only be "trailers" (gRPC sends it), anything else is dropped."""
    return [(k, v) for k, v in headers
            if k not in _HOP_BY_HOP and not (k == b"te" and v.lower() != b"trailers")]


class Bridge:
    hctx: HttpContext
    peers: Peers

    def _init_bridge(self, down: Downstream, sid: int, headers: Headers, ended: bool) -> None:
        self.down = down
        self.hctx = down.hctx
        self.sid = sid
        self.headers = headers
        self.method = header(headers, b":method") or b""
        self.path = header(headers, b":path") or b""
        self.authority = header(headers, b":authority") or b""
        self.grpc = is_grpc(headers)
        self.request_protocol = "grpc" if self.grpc else "http"
        self.protocol_text = "HTTP/2"
        self.req_ended = ended
        self.req_trailers: Headers | None = None
        self.pending: list[tuple[bytes, int]] = []
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.up: Upstream | None = None
        self.up_sid = 0
        self.attached_once = False
        self.committed = False
        self.finished = False
        self.resp_ended = False
        self.resp_trailers: Headers | None = None
        # what the observer reads at the end (observe.HttpRecord)
        self.t0 = time.perf_counter()
        self.status = 0
        self.grpc_status = ""
        self.flags: list[str] = []
        self.tries = 0
        self.request_id = ""
        self.upstream_host = "-"
        self.endpoint_pod = UNKNOWN
        self.req_body_bytes = 0
        self.resp_body_bytes = 0

    def request_line(self) -> tuple[str, str, str, str]:
        return (self.method.decode("latin-1"), self.path.decode("latin-1"), self.authority.decode("latin-1"),
                self.protocol_text)

    def source_address(self) -> str:
        return self.down.source_address()

    # -- request, from the client -------------------------------------------------------------

    def request_data(self, data: bytes, fc_len: int) -> None:
        if self.finished:
            self.down.ack(self.sid, fc_len)
            return
        self.req_body_bytes += len(data)
        if self.replay is not None:
            if self.replay_size + len(data) <= REPLAY_LIMIT_BYTES:
                self.replay.append(data)
                self.replay_size += len(data)
            else:
                self.replay = None  # too big to replay: retries are off for this request
        up = self.up
        if up is not None:
            up.send_body(self.up_sid, data, self._ack_down, fc_len)
        else:
            self.pending.append((data, fc_len))

    def _ack_down(self, n: int) -> None:
        self.down.ack(self.sid, n)

    def request_trailers(self, headers: Headers) -> None:
        self.req_trailers = headers

    def request_end(self) -> None:
        self.req_ended = True
        up = self.up
        if up is not None and not self.finished:
            up.send_end(self.up_sid, self.req_trailers)

    # -- a try --------------------------------------------------------------------------------

    def attach(self, up: Upstream, headers: Headers) -> None:
        """Open the try's stream on ``up`` and send what the client sent so far: the first
        stream opened takes the unacknowledged bytes (acknowledged as they go), a retry the
        replay copy (acknowledged long ago)."""
        first = not self.attached_once
        body = self.pending if first else [(b, 0) for b in self.replay or ()]
        end_now = self.req_ended and not body and self.req_trailers is None
        self.up_sid = up.open(headers, end_now, self)
        self.up = up
        self.attached_once = True
        if first:
            self.pending = []
        for data, fc_len in body:
            up.send_body(self.up_sid, data, self._ack_down if first else None, fc_len)
        if self.req_ended and not end_now:
            up.send_end(self.up_sid, self.req_trailers)

    def detach(self, cancel: bool) -> None:
        up = self.up
        if up is not None:
            self.up = None
            up.release(self.up_sid, cancel)

    # -- response, to the client --------------------------------------------------------------

    def commit_headers(self, headers: Headers, ended: bool) -> None:
        self.committed = True
        self.down.send_headers(self.sid, headers, ended)
        if ended:
            self.resp_ended = True
            self.finish()

    def forward_data(self, data: bytes, fc_len: int) -> None:
        up, up_sid = self.up, self.up_sid
        if self.finished:  # nobody reads it any more: the upstream gets its window back at once
            if up is not None:
                up.ack(up_sid, fc_len)
            return
        self.resp_body_bytes += len(data)
        if up is None:
            return
        self.down.send_body(self.sid, data, lambda n: up.ack(up_sid, n), fc_len)

    def forward_end(self) -> None:
        self.resp_ended = True
        self.down.send_end(self.sid, self.resp_trailers)
        self.up = None  # the upstream stream is over (the connection dropped it already)
        self.finish()

    def local_reply(self, status: int, flag: str, more: Headers | None = None) -> None:
        """An answer the sidecar makes itself: gRPC calls get a Trailers-Only gRPC status, other
        requests an HTTP status with a one-line body. After the response began: a reset."""
        hctx = self.hctx
        hctx.stats.http_local_replies += 1
        if self.committed:
            self.reset_client()
            return
        self.committed = True
        self.flags.append(flag)
        extra: Headers = [(flags.FLAGS_HEADER.encode(), ",".join(self.flags).encode())]
        if self.tries:
            extra.append((flags.ATTEMPTS_HEADER.encode(), str(self.tries).encode()))
        extra += more or ()
        reason = _REASONS.get(flag, "error")
        text = f"meshns: {reason} ({','.join(self.flags)})"
        if self.grpc:
            code = local_grpc_status(status, flag)
            self.status, self.grpc_status = 200, str(code)
            self.commit_headers(trailers_only_response(code, text, extra), True)
            return
        self.status = status
        body = b"" if self.method == b"HEAD" else (text + "\n").encode()
        head: Headers = [(b":status", str(status).encode()), (b"content-type", b"text/plain"),
                         (b"content-length", str(len(body)).encode()), *extra]
        self.committed = True
        self.down.send_headers(self.sid, head, not body)
        if body:
            self.down.send_body(self.sid, body, None, 0)
            self.down.send_end(self.sid)
        self.resp_ended = True
        self.finish()

    def upstream_reset_after_commit(self, code: int, flag: str = flags.UC) -> None:
        """The upstream reset a response already under way: reset the client's stream too (a
        cancel stays a cancel), flagged UC (UPE when the upstream broke HTTP/2)."""
        self.flags.append(flag)
        self.reset_client(CANCEL if code == CANCEL else INTERNAL_ERROR)

    def reset_client(self, code: int = INTERNAL_ERROR) -> None:
        """The response cannot complete: the client must not take a truncated one as whole."""
        self.down.reset(self.sid, code)
        self.finish()

    def downstream_reset(self, code: int) -> None:
        if self.finished:
            return
        self.flags.append(flags.DC)
        self.cancel_task()
        self.detach(cancel=True)
        self.finish()

    def cancel_task(self) -> None:
        """Stop the decision task (outbound); nothing to stop by default."""

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        pending, self.pending = self.pending, []
        for _, fc_len in pending:  # never sent anywhere: the client's window comes back all the same
            if fc_len:
                self.down.ack(self.sid, fc_len)
        self.ended()
        self.hctx.obs.http_done(self)
        self.down.stream_done(self.sid)

    def ended(self) -> None:
        """Release what the handler holds (request slots, timers); the subclass knows what."""

    # -- the response events of the try's stream (client.StreamUser), the subclass decides --

    def up_headers(self, headers: Headers, ended: bool) -> None:
        raise NotImplementedError

    def up_data(self, data: bytes, fc_len: int) -> None:
        raise NotImplementedError

    def up_trailers(self, headers: Headers) -> None:
        raise NotImplementedError

    def up_end(self) -> None:
        raise NotImplementedError

    def up_reset(self, code: int, refused: bool, protocol_error: bool = False) -> None:
        raise NotImplementedError

