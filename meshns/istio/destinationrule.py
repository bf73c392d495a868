"""DestinationRule spec -> meshns' per-service policy types (meshns.snapshot), checked field by field.

Fields the user leaves out keep meshns' defaults (which are Envoy's where Envoy has one), so a
DestinationRule that only sets ``loadBalancer`` does not reset the connection pool to zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from meshns.istio import schema as S
from meshns.istio.hosts import DNS_LABEL, service_of_host
from meshns.istio.reader import Node
from meshns.snapshot import ConnectionPool, LbPolicy, OutlierDetection, Subset

_INT32_MAX = 2**31 - 1
_SIMPLE_LB: dict[str, LbPolicy] = {
    "UNSPECIFIED": "least_request",  # Istio: the default policy
    "LEAST_REQUEST": "least_request",
    "LEAST_CONN": "least_request",  # Istio's deprecated alias
    "ROUND_ROBIN": "round_robin",
    "RANDOM": "random",
}


@dataclass(frozen=True)
class DestinationRuleSpec:
    host: str  # the meshns service name
    subsets: tuple[Subset, ...] = ()
    lb: LbPolicy = "least_request"
    pool: ConnectionPool = field(default_factory=ConnectionPool)
    outlier: OutlierDetection = field(default_factory=OutlierDetection)


def parse_destination_rule(spec: Node) -> DestinationRuleSpec:
    spec.obj(S.DESTINATION_RULE)
    host = service_of_host(spec.req("host"))
    policy = spec.get("trafficPolicy")
    subsets = spec.get("subsets")
    out = _traffic_policy(policy, DestinationRuleSpec(host)) if policy else DestinationRuleSpec(host)
    return replace(out, subsets=_subsets(subsets) if subsets else ())


def _traffic_policy(node: Node, out: DestinationRuleSpec) -> DestinationRuleSpec:
    node.obj(S.TRAFFIC_POLICY)
    lb, pool, outlier = node.get("loadBalancer"), node.get("connectionPool"), node.get("outlierDetection")
    if lb is not None:
        out = replace(out, lb=_load_balancer(lb))
    if pool is not None:
        out = replace(out, pool=_pool(pool))
    if outlier is not None:
        out = replace(out, outlier=_outlier(outlier))
    return out


def _load_balancer(node: Node) -> LbPolicy:
    node.obj(S.LOAD_BALANCER)
    simple = node.get("simple")
    if simple is None:
        return "least_request"
    name = simple.str_()
    if name == "PASSTHROUGH":
        # Passthrough means "connect to the address the caller chose"; meshns always balances.
        simple.warn("PASSTHROUGH is not implemented by meshns; using LEAST_REQUEST")
        return "least_request"
    if name not in _SIMPLE_LB:
        simple.fail(f"must be one of {', '.join([*_SIMPLE_LB, 'PASSTHROUGH'])}, got {name!r}")
    return _SIMPLE_LB[name]


def _pool(node: Node) -> ConnectionPool:
    node.obj(S.CONNECTION_POOL)
    pool = ConnectionPool()
    tcp, http = node.get("tcp"), node.get("http")
    if tcp is not None:
        tcp.obj(S.POOL_TCP)
        if (v := tcp.get("maxConnections")) is not None:
            pool = replace(pool, max_connections=v.int_(1, _INT32_MAX))
        if (v := tcp.get("connectTimeout")) is not None:
            pool = replace(pool, connect_timeout_s=v.duration_s())
    if http is not None:
        http.obj(S.POOL_HTTP)
        if (v := http.get("http1MaxPendingRequests")) is not None:
            pool = replace(pool, max_pending_requests=v.int_(1, _INT32_MAX))
        if (v := http.get("http2MaxRequests")) is not None:
            pool = replace(pool, max_requests=v.int_(1, _INT32_MAX))
        if (v := http.get("maxRequestsPerConnection")) is not None:
            pool = replace(pool, max_requests_per_connection=v.int_(0, _INT32_MAX))  # 0: unlimited
        if (v := http.get("idleTimeout")) is not None:
            pool = replace(pool, idle_timeout_s=v.duration_s())
    return pool


def _outlier(node: Node) -> OutlierDetection:
    node.obj(S.OUTLIER)
    out = OutlierDetection()
    c5xx, legacy = node.get("consecutive5xxErrors"), node.get("consecutiveErrors")
    if c5xx is None and legacy is not None:
        c5xx = legacy  # Istio's deprecated name for the same counter
    elif c5xx is not None and legacy is not None:
        legacy.warn("is the deprecated name of consecutive5xxErrors, which is also given; ignored")
    if c5xx is not None:
        out = replace(out, consecutive_5xx=c5xx.int_(0, _INT32_MAX))
    if (v := node.get("consecutiveGatewayErrors")) is not None:
        out = replace(out, consecutive_gateway_errors=v.int_(0, _INT32_MAX))
    if (v := node.get("interval")) is not None:
        out = replace(out, interval_s=v.duration_s())
    if (v := node.get("baseEjectionTime")) is not None:
        out = replace(out, base_ejection_s=v.duration_s())
    if (v := node.get("maxEjectionPercent")) is not None:
        out = replace(out, max_ejection_percent=float(v.int_(0, 100)))
    # Istio: both counters at 0 turns ejection off (nothing could ever trigger it).
    return replace(out, enabled=out.consecutive_5xx > 0 or out.consecutive_gateway_errors > 0)


def _subsets(node: Node) -> tuple[Subset, ...]:
    out: dict[str, Subset] = {}
    for item in node.list_():
        item.obj(S.SUBSET)
        name_node = item.req("name")
        name = name_node.str_(pattern=DNS_LABEL, what="a subset name (DNS label)")
        if name in out:
            name_node.fail(f"duplicate subset name {name!r}")
        labels = item.get("labels")
        pairs = tuple((k, v.str_(what="a string (quote numbers: \"1\")")) for k, v in labels.items()) \
            if labels else ()
        out[name] = Subset(name, pairs)
    return tuple(out.values())
