"""Counters of the L4 relay: plain ints bumped in place, read by /stats (and later Prometheus).

Plain attributes, not a metrics library, because the byte path increments them per chunk and an
attribute add is the cheapest thing Python can do. The metrics layer maps them at scrape time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Final

REFUSAL_COUNTERS: Final = frozenset({"http_400", "http_408", "http_413", "http_414", "http_431", "http_501"})


@dataclass(slots=True)
class DirectionStats:
    """Counters of one listener. "up" is client -> upstream, "down" upstream -> client."""

    accepted: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(slots=True)
class Stats:
    outbound: DirectionStats = field(default_factory=DirectionStats)
    inbound: DirectionStats = field(default_factory=DirectionStats)
    # Connections currently open (accepted and not yet fully closed), both directions together.
    active: int = 0
    # Upstream connect refused, unreachable or failed otherwise; timeouts are counted separately.
    connect_failures: int = 0
    connect_timeouts: int = 0
    # The original destination could not be recovered (no conntrack entry, bad sockaddr).
    resolve_failures: int = 0
    rejects: int = 0
    probes: int = 0
    idle_timeouts: int = 0
    # Connections ended by the peer with an error (reset, broken pipe) rather than a clean close.
    peer_errors: int = 0
    # HTTP/1 connections to services (dataplane.http1): requests seen, requests refused (all
    # causes, then per status below), responses the sidecar made itself (404 NR, 503 UO/UH/URX...,
    # 504 UT, faults, and the refusals of a request already under way).
    http_requests: int = 0
    http_bad_requests: int = 0
    http_local_replies: int = 0
    # Refusals per status: malformed (400), head not complete within request_headers_timeout_s
    # (408), body over max_request_body_bytes (413), request line too long (414), head too large
    # or too many headers (431), a Transfer-Encoding other than chunked (501).
    http_400: int = 0
    http_408: int = 0
    http_413: int = 0
    http_414: int = 0
    http_431: int = 0
    http_501: int = 0
    # HTTP/1 response bodies (their part after the first read) moved by splice(2) between two
    # plain TCP sockets (dataplane.splice); their bytes are counted as any others.
    http_spliced: int = 0
    # mTLS: connections dialled with TLS, refused for the wrong peer identity (secure naming);
    # inbound connections terminated, handshakes that failed (no/expired/foreign certificate,
    # garbage, timeout), handshakes the client gave up (closed after its ClientHello was
    # answered), verified peers refused (revoked), plaintext refused under STRICT; and of the
    # connections both ways, those that resumed a TLS session (no chain verified again).
    tls_out: int = 0
    tls_out_resumed: int = 0
    tls_peer_rejected: int = 0
    tls_in: int = 0
    tls_in_resumed: int = 0
    tls_handshake_failures: int = 0
    tls_handshake_abandoned: int = 0
    tls_in_rejected: int = 0
    plaintext_refused: int = 0
    # Authorization: connections closed and requests answered 403 by an AuthorizationPolicy.
    authz_denied_tcp: int = 0
    authz_denied_http: int = 0
    # HTTP/2: client connections (outbound to a service, or inbound), those closed with GOAWAY
    # ENHANCE_YOUR_CALM by the flood guard, and those closed for a protocol error (h2's GOAWAY:
    # oversized header list, bad frames, flow-control violations).
    h2_connections: int = 0
    h2_floods: int = 0
    h2_protocol_errors: int = 0

    def count_refusal(self, status: int) -> None:
        """One refused request, per status; a status outside the set is counted as a 400."""
        name = f"http_{status}"
        if name not in REFUSAL_COUNTERS:
            name = "http_400"
        setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
