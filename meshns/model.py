"""Registry records: what a pod is, independent of where it is stored."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address


class PodState(StrEnum):
    CREATING = "creating"  # row reserved, kernel objects being made; owner_pid is the creator
    READY = "ready"  # rules validated, sidecar up, app started
    DELETING = "deleting"  # teardown in progress; owner_pid is the deleter


@dataclass(frozen=True)
class ServicePortDecl:
    """``--service NAME:PORT[:TARGET_PORT]``: the pod serves NAME's PORT on TARGET_PORT."""

    service: str
    port: int
    target_port: int


@dataclass(frozen=True)
class ServiceRecord:
    name: str
    vip: IPv4Address
    ports: tuple[tuple[int, int], ...]  # (port, target_port)
    created_at: float


@dataclass(frozen=True)
class PodSpec:
    """What the user asked for at create time (everything needed to rebuild the pod's plans)."""

    app: tuple[str, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())
    services: tuple[ServicePortDecl, ...] = ()
    http_parser: str = "auto"  # the sidecar's HTTP/1 parser: auto (httptools), httptools or h11
    drain_timeout_s: float = 5.0  # on stop, the sidecar finishes in-flight requests for up to this
    # Identity: spiffe://<trust-domain>/ns/<namespace>/sa/<service_account>; "" = the pod's name.
    namespace: str = "default"
    service_account: str = ""
    cert_ttl_s: float | None = None  # workload certificate lifetime; None: the CA's default (24 h)
    # The sidecar's HTTP/1 limits: request bodies over this get 413 (0: no limit), a request head
    # not complete this long after its first byte gets 408.
    max_request_body_bytes: int = 0
    request_headers_timeout_s: float = 10.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PodSpec:
        raw = json.loads(text)
        return cls(
            app=tuple(raw.get("app", ())),
            exclude_outbound_ports=tuple(raw.get("exclude_outbound_ports", ())),
            exclude_inbound_ports=tuple(raw.get("exclude_inbound_ports", ())),
            exclude_outbound_cidrs=tuple(raw.get("exclude_outbound_cidrs", ())),
            labels=tuple((str(k), str(v)) for k, v in raw.get("labels", ())),
            services=tuple(ServicePortDecl(str(d["service"]), int(d["port"]), int(d["target_port"]))
                           for d in raw.get("services", ())),
            http_parser=str(raw.get("http_parser", "auto")),
            drain_timeout_s=float(raw.get("drain_timeout_s", 5.0)),  # absent in older rows
            namespace=str(raw.get("namespace", "default")),
            service_account=str(raw.get("service_account", "")),
            cert_ttl_s=None if raw.get("cert_ttl_s") is None else float(raw["cert_ttl_s"]),
            max_request_body_bytes=int(raw.get("max_request_body_bytes", 0)),  # absent in older rows
            request_headers_timeout_s=float(raw.get("request_headers_timeout_s", 10.0)),
        )


def account_of(name: str, spec: PodSpec) -> str:
    """The service account of a pod's identity: as given at create, else the pod's name."""
    return spec.service_account or name


def identity_of(pod: PodRecord, trust_domain: str | None) -> str:
    """The pod's SPIFFE ID in the mesh's trust domain ("" without a CA)."""
    if trust_domain is None:
        return ""
    return f"spiffe://{trust_domain}/ns/{pod.spec.namespace}/sa/{account_of(pod.name, pod.spec)}"


@dataclass(frozen=True)
class PodRecord:
    name: str
    ip: IPv4Address
    netns: str
    veth: str
    state: PodState
    spec: PodSpec
    owner_pid: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class RemotePod:
    """A ready pod on another host of a multi-host mesh, as that host's agent published it.

    Only what other hosts need to route to it and check its identity: its address, labels,
    the services it serves, its namespace and service account (``spec.app`` is never shared).
    """

    host: str
    name: str
    ip: IPv4Address
    spec: PodSpec

    @property
    def qualified(self) -> str:
        """The name other hosts know it by: pod names are only unique per host."""
        return f"{self.name}.{self.host}"

    def as_record(self) -> PodRecord:
        """The view the compiler works on: a ready pod with no local namespace."""
        # The identity keeps the pod's own name as its account, not the qualified one.
        spec = replace(self.spec, service_account=account_of(self.name, self.spec))
        return PodRecord(name=self.qualified, ip=self.ip, netns="", veth="", state=PodState.READY,
                         spec=spec, owner_pid=None, created_at=0.0, updated_at=0.0)
