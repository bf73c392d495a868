"""The observation seam of the data path: who the peers are, and what happens when a request or a
TCP connection ends (metrics, access log line).

Connections ask for their ``Peers`` once (``outbound`` / ``inbound``); requests and TCP
connections report at their end through ``http_done`` / ``tcp_end``. The peer index is rebuilt
lazily when the snapshot object changes, so a reload costs one rebuild, not one per lookup.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Protocol

from meshns.dataplane import accesslog
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.labels import (
    PeerIndex,
    Peers,
    http_labels,
    inbound_peers,
    outbound_peers,
    tcp_labels,
)
from meshns.dataplane.metrics import Metrics, TcpObs
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.tracing import Bits

_INFO = logging.INFO


class HttpRecord(Protocol):
    """What a finished request exposes to the observer (RequestFlow, InboundExchange)."""

    peers: Peers
    request_protocol: str  # Istio's label: "http", or "grpc" for a gRPC call
    endpoint_pod: str
    status: int
    grpc_status: str
    flags: list[str]
    t0: float
    req_body_bytes: int
    resp_body_bytes: int
    tries: int
    request_id: str
    upstream_host: str

    def source_address(self) -> str: ...

    def request_line(self) -> tuple[str, str, str, str]:
        """(method, path, authority, protocol as in "HTTP/1.1") for the access log."""
        ...


# A TcpObs that reports nowhere: upgraded HTTP connections (already counted as a request) and
# connections that never got as far as forwarding. Its counters grow and are never read.
NULL_TCP = TcpObs(None, Peers("", "", "", ""), "", "", "")


class Observer:
    def __init__(self, config: SidecarConfig, store: SnapshotStore, metrics: Metrics,
                 bits: Bits | None = None) -> None:
        self.pod = config.pod
        self.store = store
        self.metrics = metrics
        self.access_http = config.access_log in ("on", "http")
        self.access_tcp = config.access_log == "on"
        self.bits: Bits = bits if bits is not None else random.Random().getrandbits
        self._index = PeerIndex(store.current.snapshot)

    def index(self) -> PeerIndex:
        snap = self.store.current.snapshot
        if self._index.snapshot is not snap:
            self._index = PeerIndex(snap)
        return self._index

    def outbound(self, dst_ip: str, dst_port: int, service: str | None = None) -> Peers:
        return outbound_peers(self.index(), self.pod, dst_ip, dst_port, service)

    def inbound(self, client_ip: str, dst_ip: str, dst_port: int, peer: str = "") -> Peers:
        return inbound_peers(self.index(), self.pod, client_ip, dst_ip, dst_port, peer)

    # TCP

    def tcp_start(self, peers: Peers, dst_workload: str, client: str, upstream: str) -> TcpObs:
        obs = TcpObs(self.metrics.tcp_children(tcp_labels(peers, dst_workload)), peers,
                     dst_workload, client, upstream)
        self.metrics.tcp_open(obs)
        return obs

    def tcp_end(self, obs: TcpObs, flags: str = "") -> None:
        if obs.children is None:
            return
        self.metrics.tcp_close(obs)
        obs.children = None  # reported once, whatever calls this again
        if self.access_tcp and accesslog.log.isEnabledFor(_INFO):
            p = obs.peers
            accesslog.write(accesslog.tcp_line(
                reporter=p.reporter, source_workload=p.source_workload, source_address=obs.client,
                destination_workload=obs.dst_workload, destination_service=p.destination_service,
                destination_address=obs.upstream, response_flags=flags or "-",
                duration_ms=(time.perf_counter() - obs.t0) * 1000.0, bytes_received=obs.received,
                bytes_sent=obs.sent))

    # HTTP

    def http_done(self, r: HttpRecord) -> None:
        duration_ms = (time.perf_counter() - r.t0) * 1000.0
        flags = ",".join(r.flags) if r.flags else ""
        self.metrics.observe_http(
            http_labels(r.peers, r.endpoint_pod, r.status, r.grpc_status, flags, r.request_protocol),
            duration_ms, r.req_body_bytes, r.resp_body_bytes)
        if self.access_http and accesslog.log.isEnabledFor(_INFO):
            p = r.peers
            method, path, authority, protocol = r.request_line()
            accesslog.write(accesslog.http_line(
                reporter=p.reporter, source_workload=p.source_workload,
                source_address=r.source_address(), destination_workload=r.endpoint_pod,
                destination_service=p.destination_service, destination_address=r.upstream_host,
                method=method, path=path, authority=authority,
                protocol=protocol, status=r.status, response_flags=flags or "-",
                attempts=r.tries, duration_ms=duration_ms, request_bytes=r.req_body_bytes,
                response_bytes=r.resp_body_bytes, request_id=r.request_id,
                upstream_host=r.upstream_host))


def peername_of(transport: object) -> str:
    """``ip:port`` of an accepted transport's peer, for log lines (not the byte path)."""
    get = getattr(transport, "get_extra_info", None)
    addr = get("peername") if get is not None else None
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return "-"
