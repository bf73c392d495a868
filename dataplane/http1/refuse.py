"""Refusing a client's request: the answer, the counters, the log line, the Istio metrics row.

Both HTTP/1 listeners (outbound to a service, inbound to the app) refuse the same way, whatever
the cause: the parser said no (400 malformed, 414 request line, 431 head, 501 coding), the body
outgrew ``max_request_body_bytes`` (413) or the head did not arrive within
``request_headers_timeout_s`` (408). The client gets the status with ``Connection: close`` and
Envoy's response flag DPE (downstream protocol error), the connection closes once the answer is
written, and nothing of the refused request is forwarded (a try already under way is reset).
Every refusal is counted per status in /stats (``http_<status>``) and Prometheus
(``meshns_http_bad_requests_total{listener,code}``), logged once at info with the peer, and
recorded in ``istio_requests_total`` like any other local reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from meshns.dataplane.http1.head import ParseError, local_response
from meshns.dataplane.labels import Peers
from meshns.dataplane.policy.flags import FLAGS_HEADER

if TYPE_CHECKING:
    from meshns.dataplane.http1.context import HttpContext

log = logging.getLogger("meshns.dataplane.http1.refuse")

DPE: Final = "DPE"  # Envoy's response flag for a downstream protocol error
STATUS_TEXT: Final = {
    400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large", 414: "URI Too Long",
    431: "Request Header Fields Too Large", 501: "Not Implemented",
}
_FLAG_LINE: Final = f"{FLAGS_HEADER}: {DPE}\r\n".encode()


def refusal(status: int) -> bytes:
    """The whole response a refused client gets."""
    text = STATUS_TEXT.get(status, "Bad Request")
    return local_response(status, text, [_FLAG_LINE], f"{text}\n".encode(), close=True)


def count(hctx: HttpContext, exc: ParseError, listener: str, peer: str) -> None:
    """The counters and the log line of one refusal (the metrics row is the caller's: a request
    flow already under way records its own)."""
    stats = hctx.stats
    stats.http_bad_requests += 1
    stats.count_refusal(exc.status)
    hctx.obs.metrics.bad_request(listener, exc.status)
    log.info("refused %s request from %s: %d %s", listener, peer, exc.status, exc.reason)


class Refused:
    """The ``observe.HttpRecord`` of a request refused before any request flow existed."""

    request_protocol = "http"
    grpc_status = ""
    tries = 0
    request_id = ""
    req_body_bytes = 0

    def __init__(self, peers: Peers, endpoint_pod: str, status: int, source: str, resp_bytes: int,
                 t0: float | None = None) -> None:
        self.peers = peers
        self.endpoint_pod = endpoint_pod
        self.status = status
        self.flags = [DPE]
        self.t0 = time.perf_counter() if t0 is None else t0
        self.resp_body_bytes = resp_bytes
        self.upstream_host = "-"
        self._source = source

    def source_address(self) -> str:
        return self._source

    def request_line(self) -> tuple[str, str, str, str]:
        return "-", "-", "-", "HTTP/1.1"


def answer(hctx: HttpContext, transport: asyncio.WriteTransport, exc: ParseError, peers: Peers, endpoint_pod: str,
           source: str) -> None:
    """Write the refusal and record its metrics row and access log line (the caller closes)."""
    data = refusal(exc.status)
    transport.write(data)
    body = len(STATUS_TEXT.get(exc.status, "Bad Request")) + 1
    hctx.obs.http_done(Refused(peers, endpoint_pod, exc.status, source, body))
