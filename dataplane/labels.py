"""Istio's standard metric labels, derived from the snapshot and the sidecar's config only.

Label values never come from request content (paths, Host headers, client-chosen strings): a
client could otherwise blow up the number of series. Who a peer is comes from the snapshot: an IP
that is an endpoint of some service is that endpoint's pod; a (pod IP, target port) pair that
serves a service names that service. The index is built once per snapshot object (``PeerIndex``)
and looked up once per connection, never per request.

Naming follows Istio: ``reporter`` is "source" in the client's sidecar (outbound) and
"destination" in the server's (inbound). Principals are SPIFFE IDs: in the server's sidecar the
verified client's and its own, with ``connection_security_policy`` "mutual_tls" (or "none" for a
plaintext client); in the client's sidecar its own and the one the snapshot expects of the
destination, with the policy "unknown", as Istio's source reporter does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from meshns.snapshot import Snapshot

UNKNOWN: Final = "unknown"
NO_FLAGS: Final = "-"
SOURCE: Final = "source"
DESTINATION: Final = "destination"
SECURITY_NONE: Final = "none"
SECURITY_MTLS: Final = "mutual_tls"

# Label names, in the order of the label-value tuples below.
HTTP_LABELS: Final = (
    "reporter", "source_workload", "source_principal", "destination_workload",
    "destination_principal", "destination_service", "request_protocol", "response_code",
    "grpc_response_status", "response_flags", "connection_security_policy",
)
TCP_LABELS: Final = (
    "reporter", "source_workload", "source_principal", "destination_workload",
    "destination_principal", "destination_service", "request_protocol", "response_flags",
    "connection_security_policy",
)
SERVICE_LABELS: Final = ("destination_service",)

HttpLabels = tuple[str, str, str, str, str, str, str, str, str, str, str]
TcpLabels = tuple[str, str, str, str, str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class Peers:
    """Who is on either end of one connection, as far as the snapshot knows."""

    reporter: str
    source_workload: str
    destination_workload: str
    destination_service: str
    source_principal: str = UNKNOWN
    destination_principal: str = UNKNOWN
    security: str = SECURITY_NONE


class PeerIndex:
    """IP -> pod name (every workload of the mesh) and (IP, port) -> service name (endpoints)."""

    __slots__ = ("identity", "identity_by_ip", "pod", "pod_by_ip", "service_by_target", "snapshot")

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.pod = snapshot.pod
        self.identity = snapshot.security.identity or UNKNOWN
        self.pod_by_ip: dict[str, str] = {}
        self.identity_by_ip: dict[str, str] = {}
        self.service_by_target: dict[tuple[str, int], str] = {}
        for w in snapshot.workloads:
            self.pod_by_ip[w.ip] = w.pod
            if w.identity:
                self.identity_by_ip[w.ip] = w.identity
        for svc in sorted(snapshot.services, key=lambda s: s.name):
            for ep in svc.endpoints:
                self.pod_by_ip.setdefault(ep.ip, ep.pod)
                for p in svc.ports:
                    self.service_by_target.setdefault((ep.ip, p.target_port), svc.name)

    def workload(self, ip: str) -> str:
        return self.pod_by_ip.get(ip, UNKNOWN)

    def service_at(self, ip: str, port: int) -> str:
        """The service served at ``ip:port``, else the pod at ``ip``, else "unknown"."""
        name = self.service_by_target.get((ip, port))
        return name if name is not None else self.pod_by_ip.get(ip, UNKNOWN)


def outbound_peers(index: PeerIndex, pod: str, dst_ip: str, dst_port: int,
                   service: str | None = None) -> Peers:
    """The client sidecar's view: the source is this pod. For service (VIP) traffic the service is
    known and the workload is the endpoint chosen per request (filled in by the caller)."""
    if service is not None:
        return Peers(SOURCE, pod, UNKNOWN, service, index.identity, UNKNOWN, UNKNOWN)
    return Peers(SOURCE, pod, index.workload(dst_ip), index.service_at(dst_ip, dst_port), index.identity,
                 index.identity_by_ip.get(dst_ip, UNKNOWN), UNKNOWN)


def inbound_peers(index: PeerIndex, pod: str, client_ip: str, dst_ip: str, dst_port: int, peer: str = "") -> Peers:
    """The server sidecar's view: the destination is this pod; the source is whoever the snapshot
    says has the client's IP (and, with mTLS, the verified peer identity). The service is the one
    this pod serves on ``dst_port``, if any."""
    name = index.service_by_target.get((dst_ip, dst_port))
    return Peers(DESTINATION, index.workload(client_ip), pod, name if name is not None else pod,
                 peer or UNKNOWN, index.identity, SECURITY_MTLS if peer else SECURITY_NONE)


def http_labels(peers: Peers, destination_workload: str, code: int, grpc_status: str,
                flags: str, protocol: str = "http") -> HttpLabels:
    return (peers.reporter, peers.source_workload, peers.source_principal, destination_workload,
            peers.destination_principal, peers.destination_service, protocol, str(code), grpc_status,
            flags or NO_FLAGS, peers.security)


def tcp_labels(peers: Peers, destination_workload: str, flags: str = "") -> TcpLabels:
    return (peers.reporter, peers.source_workload, peers.source_principal, destination_workload,
            peers.destination_principal, peers.destination_service, "tcp", flags or NO_FLAGS, peers.security)
