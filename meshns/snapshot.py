"""The compiled snapshot: everything a sidecar needs, pre-chewed, in one immutable value.

The control plane (meshns.compile) builds one per pod from the registry and applied config and
writes it as JSON next to the pod; the sidecar loads it at start and whenever the file changes,
builds its indexes once (``Snapshot.by_dst``) and swaps the whole thing in atomically. The sidecar
never parses user config and never reads the registry.

Vocabulary follows Istio so applied VirtualService / DestinationRule fields map one to one:
``attempts`` is the number of retries (Istio's meaning), durations are seconds (float), percents
are 0..100.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

LbPolicy = Literal["least_request", "round_robin", "random"]
MatchKind = Literal["exact", "prefix", "regex"]
MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
AuthzAction = Literal["ALLOW", "DENY"]

# Istio's default retry policy (2 retries on these conditions, 503 retriable).
DEFAULT_RETRY_ON: tuple[str, ...] = (
    "connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes",
)
RETRY_ON_CONDITIONS = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-status-codes",
    # gRPC conditions (issue: HTTP/2 and gRPC), accepted now so Istio YAML round-trips.
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})


@dataclass(frozen=True)
class StringMatch:
    kind: MatchKind
    value: str


@dataclass(frozen=True)
class HeaderMatch:
    name: str  # lower case
    match: StringMatch


@dataclass(frozen=True)
class RouteMatch:
    """All given conditions must hold; an empty RouteMatch matches every request."""

    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 2  # retries after the first try
    per_try_timeout_s: float | None = None
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    retriable_status_codes: tuple[int, ...] = (503,)


@dataclass(frozen=True)
class FaultPolicy:
    delay_s: float | None = None
    delay_percent: float = 0.0
    abort_status: int | None = None
    abort_percent: float = 0.0


@dataclass(frozen=True)
class WeightedDestination:
    subset: str | None = None  # None: every endpoint of the service
    weight: int = 100


@dataclass(frozen=True)
class HttpRoute:
    name: str = "default"
    matches: tuple[RouteMatch, ...] = ()  # any of them (OR); empty: every request
    destinations: tuple[WeightedDestination, ...] = (WeightedDestination(),)
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float | None = None  # the whole request, all tries included; None: no limit
    fault: FaultPolicy | None = None


@dataclass(frozen=True)
class ConnectionPool:
    max_connections: int = 1024  # per service, all endpoints together
    max_pending_requests: int = 1024  # waiting for a connection
    max_requests: int = 1024  # active requests
    max_requests_per_connection: int = 0  # 0: no limit
    connect_timeout_s: float = 1.0
    idle_timeout_s: float = 60.0  # idle upstream keep-alive connections are closed after this


@dataclass(frozen=True)
class OutlierDetection:
    enabled: bool = True
    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 0  # 0: not used separately (5xx covers them)
    interval_s: float = 10.0
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: float = 10.0  # at least one endpoint may always be ejected (as Envoy)


@dataclass(frozen=True)
class RetryBudget:
    percent: float = 20.0  # retries in flight at most this share of active requests ...
    min_concurrent: int = 3  # ... but always at least this many


@dataclass(frozen=True)
class PeerAuthn:
    """A pod's effective PeerAuthentication: the mode on its inbound ports (Istio semantics)."""

    mode: MtlsMode = "PERMISSIVE"
    ports: tuple[tuple[int, MtlsMode], ...] = ()  # (target port in the pod, mode): overrides ``mode``

    def mode_for(self, port: int) -> MtlsMode:
        for p, m in self.ports:
            if p == port:
                return m
        return self.mode


@dataclass(frozen=True)
class Endpoint:
    pod: str
    ip: str
    labels: tuple[tuple[str, str], ...] = ()
    # The SPIFFE ID its sidecar must present (secure naming); "" for an address that is not meshed.
    identity: str = ""
    # What the pod accepts, so a client sends plaintext to ports whose mode is DISABLE (auto mTLS).
    mtls: PeerAuthn = field(default_factory=PeerAuthn)

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


@dataclass(frozen=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ServicePort:
    port: int  # what clients call on the VIP
    target_port: int  # where the pods listen


@dataclass(frozen=True)
class Service:
    name: str
    vip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    subsets: tuple[Subset, ...] = ()
    lb: LbPolicy = "least_request"
    pool: ConnectionPool = field(default_factory=ConnectionPool)
    outlier: OutlierDetection = field(default_factory=OutlierDetection)
    budget: RetryBudget = field(default_factory=RetryBudget)
    routes: tuple[HttpRoute, ...] = (HttpRoute(),)  # first match wins; the last one matches all

    def subset_endpoints(self, subset: str | None) -> tuple[Endpoint, ...]:
        if subset is None:
            return self.endpoints
        for s in self.subsets:
            if s.name == subset:
                want = set(s.labels)
                return tuple(e for e in self.endpoints if want <= set(e.labels))
        return ()

    def target_port(self, port: int) -> int | None:
        for p in self.ports:
            if p.port == port:
                return p.target_port
        return None


@dataclass(frozen=True)
class AuthzSource:
    """Istio ``rule.from[].source``: every non-empty field must match (AND)."""

    # Istio principal form "<trust-domain>/ns/<ns>/sa/<sa>" (no "spiffe://"), with Istio's
    # patterns: exact, "prefix*", "*suffix", "*" (any authenticated peer).
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()  # same patterns, matched on the peer's namespace
    not_namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthzOperation:
    """Istio ``rule.to[].operation``: every non-empty field must match (AND)."""

    ports: tuple[int, ...] = ()  # the destination (target) port in the pod
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()  # HTTP only
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # HTTP only; exact, "prefix*", "*suffix", "*"
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthzRule:
    """Matches when any source matches (or there are none) and any operation matches (or none)."""

    sources: tuple[AuthzSource, ...] = ()
    operations: tuple[AuthzOperation, ...] = ()


@dataclass(frozen=True)
class AuthzPolicy:
    name: str  # "<namespace>/<name>", for logs, metrics and 403 reasons
    action: AuthzAction
    rules: tuple[AuthzRule, ...] = ()  # no rules: the policy matches nothing


@dataclass(frozen=True)
class Security:
    """This pod's side of mTLS and authorization, compiled for it alone."""

    identity: str = ""  # this pod's SPIFFE ID, "spiffe://<td>/ns/<ns>/sa/<sa>"; "" before a CA exists
    trust_domain: str = "cluster.local"
    peer_authn: PeerAuthn = field(default_factory=PeerAuthn)
    policies: tuple[AuthzPolicy, ...] = ()  # the AuthorizationPolicies that select this pod
    revoked: tuple[str, ...] = ()  # SPIFFE IDs every sidecar refuses, whatever their certificates say


@dataclass(frozen=True)
class Snapshot:
    version: int
    pod: str
    services: tuple[Service, ...] = ()
    # Every pod of the mesh (name, address, labels, identity), so metrics and logs can name the
    # workload behind any address and clients know which destinations speak mTLS.
    workloads: tuple[Endpoint, ...] = ()
    security: Security = field(default_factory=Security)

    def by_dst(self) -> dict[tuple[str, int], Service]:
        """The index the sidecar uses per connection: (VIP, port) -> service."""
        return {(s.vip, p.port): s for s in self.services for p in s.ports}

    def to_json(self, memo: dict[int, Any] | None = None) -> str:
        """``memo`` shared across the snapshots of one publish converts the services and workloads
        every pod's snapshot holds once, not once per pod (see ``plain``)."""
        return json.dumps(plain(self, {} if memo is None else memo), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        return snapshot_from_dict(json.loads(text))


# A pod directory holds its snapshot as two files. ``snapshot.json`` is the mesh-wide part
# (version, services, workloads), the same text for every pod: publish encodes it once and
# hard-links one inode into every pod directory, so its cost does not grow with the number of
# pods. ``security.json`` is the pod's own part (its name and Security), rewritten only when it
# changes. The sidecar reads both and combines them into one Snapshot (``combine``).
SNAPSHOT_FILE = "snapshot.json"
SECURITY_FILE = "security.json"
MESH_KEYS = ("version", "services", "workloads")


def _encode(value: Any) -> str:
    # Deterministic: the same view gives the same bytes, so unchanged files compare equal.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def mesh_json(version: int, services: tuple[Service, ...], workloads: tuple[Endpoint, ...]) -> str:
    """The text of ``snapshot.json``: the part of a snapshot every pod shares."""
    memo: dict[int, Any] = {}
    return _encode({"version": version, "services": plain(services, memo), "workloads": plain(workloads, memo)})


def security_json(pod: str, security: Security) -> str:
    """The text of ``security.json``: the part of a snapshot that is the pod's own."""
    return _encode({"pod": pod, "security": plain(security, {})})


def combine(mesh: object, own: object, pod: str) -> dict[str, Any]:
    """The decoded snapshot.json and security.json (None: no such file) as the one dict
    ``snapshot_from_dict`` reads (pure). No security file means the default Security, as a
    snapshot without one always meant; a pod name missing from it is the sidecar's own.
    Anything but objects raises TypeError, as a broken file does in the parser."""
    if not isinstance(mesh, dict):
        raise TypeError(f"{SNAPSHOT_FILE} is not an object")
    if own is not None and not isinstance(own, dict):
        raise TypeError(f"{SECURITY_FILE} is not an object")
    # A snapshot.json of the single-file layout (written before the split) still carries its pod's
    # part: used when there is no security.json beside it.
    mine = mesh if own is None else own
    out = {k: v for k, v in mesh.items() if k not in ("pod", "security")}
    out["pod"] = mine.get("pod", pod)
    out["security"] = mine.get("security")
    return out


def plain(obj: Any, memo: dict[int, Any]) -> Any:
    """``dataclasses.asdict`` for the snapshot's frozen dataclasses, without its deep copies and
    with each object converted once per ``memo``. Keyed by identity, so the memo holds the object
    itself too: an id is only unique while its object lives, and a freed one's id is reused."""
    if is_dataclass(obj) and not isinstance(obj, type):
        hit = memo.get(id(obj))
        if hit is None:
            out = {f.name: plain(getattr(obj, f.name), memo) for f in fields(obj)}
            memo[id(obj)] = (obj, out)
            return out
        return hit[1]
    if isinstance(obj, (tuple, list)):
        return [plain(x, memo) for x in obj]
    if isinstance(obj, dict):
        return {k: plain(v, memo) for k, v in obj.items()}
    return obj


def _t(items: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in items)


def _sm(raw: Any) -> StringMatch | None:
    return None if raw is None else StringMatch(raw["kind"], raw["value"])


def _route(raw: dict[str, Any]) -> HttpRoute:
    return HttpRoute(
        name=raw["name"],
        matches=tuple(
            RouteMatch(uri=_sm(m["uri"]), method=_sm(m["method"]),
                       headers=tuple(HeaderMatch(h["name"], StringMatch(**h["match"])) for h in m["headers"]))
            for m in raw["matches"]
        ),
        destinations=tuple(WeightedDestination(**d) for d in raw["destinations"]),
        retries=RetryPolicy(
            attempts=raw["retries"]["attempts"], per_try_timeout_s=raw["retries"]["per_try_timeout_s"],
            retry_on=tuple(raw["retries"]["retry_on"]),
            retriable_status_codes=tuple(raw["retries"]["retriable_status_codes"]),
        ),
        timeout_s=raw["timeout_s"],
        fault=FaultPolicy(**raw["fault"]) if raw["fault"] is not None else None,
    )


def _peer_authn(raw: Any) -> PeerAuthn:
    if raw is None:
        return PeerAuthn()
    return PeerAuthn(mode=raw["mode"], ports=tuple((int(p), m) for p, m in raw["ports"]))


def _endpoint(e: dict[str, Any]) -> Endpoint:
    return Endpoint(e["pod"], e["ip"], _t(e["labels"]), e.get("identity", ""), _peer_authn(e.get("mtls")))


def _security(raw: Any) -> Security:
    if raw is None:
        return Security()
    return Security(
        identity=raw["identity"], trust_domain=raw["trust_domain"], peer_authn=_peer_authn(raw["peer_authn"]),
        policies=tuple(
            AuthzPolicy(p["name"], p["action"], tuple(
                AuthzRule(
                    sources=tuple(AuthzSource(**{k: tuple(v) for k, v in src.items()}) for src in r["sources"]),
                    operations=tuple(AuthzOperation(**{k: tuple(v) for k, v in op.items()}) for op in r["operations"]),
                ) for r in p["rules"]))
            for p in raw["policies"]),
        revoked=tuple(raw["revoked"]),
    )


def snapshot_from_dict(raw: dict[str, Any]) -> Snapshot:
    services = []
    for s in raw["services"]:
        services.append(Service(
            name=s["name"], vip=s["vip"],
            ports=tuple(ServicePort(**p) for p in s["ports"]),
            endpoints=tuple(_endpoint(e) for e in s["endpoints"]),
            subsets=tuple(Subset(x["name"], _t(x["labels"])) for x in s["subsets"]),
            lb=s["lb"], pool=ConnectionPool(**s["pool"]), outlier=OutlierDetection(**s["outlier"]),
            budget=RetryBudget(**s["budget"]), routes=tuple(_route(r) for r in s["routes"]),
        ))
    workloads = tuple(_endpoint(e) for e in raw.get("workloads", ()))
    return Snapshot(version=raw["version"], pod=raw["pod"], services=tuple(services), workloads=workloads,
                    security=_security(raw.get("security")))
