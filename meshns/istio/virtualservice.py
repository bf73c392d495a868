"""VirtualService spec -> meshns' compiled route types (meshns.snapshot), checked field by field.

Routes are converted here, at parse time, so a bad VirtualService is refused by `meshns apply`
and never reaches a sidecar; compile.py only chooses among already-valid specs and adds what
depends on other documents (the catch-all route, subset cross-checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshns.istio import schema as S
from meshns.istio.hosts import DNS_LABEL, service_of_host
from meshns.istio.reader import Node
from meshns.snapshot import (
    DEFAULT_RETRY_ON,
    RETRY_ON_CONDITIONS,
    FaultPolicy,
    HeaderMatch,
    HttpRoute,
    MatchKind,
    RetryPolicy,
    RouteMatch,
    StringMatch,
    WeightedDestination,
)


@dataclass(frozen=True)
class VirtualServiceSpec:
    hosts: tuple[str, ...]  # meshns service names (FQDNs reduced to their first label)
    http: tuple[HttpRoute, ...]  # as written, in order; compile adds the catch-all


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP token (RFC 9110)
_MATCH_KINDS: tuple[MatchKind, ...] = ("exact", "prefix", "regex")
_STATUS_CODE = re.compile(r"[1-5][0-9][0-9]")


def parse_virtual_service(spec: Node) -> VirtualServiceSpec:
    spec.obj(S.VIRTUAL_SERVICE)
    host_nodes = spec.req("hosts").list_(non_empty=True)
    hosts = tuple(dict.fromkeys(service_of_host(h) for h in host_nodes))
    gateways = spec.get("gateways")
    # "mesh" is the sidecars themselves, which is all meshns is; anything else is an ingress gateway.
    if gateways is not None and any(g.str_() != "mesh" for g in gateways.list_()):
        gateways.warn("other than \"mesh\" is not implemented by meshns; ignored")
    http = spec.get("http")
    routes = tuple(_route(r, i, hosts) for i, r in enumerate(http.list_())) if http else ()
    return VirtualServiceSpec(hosts=hosts, http=routes)


def _route(node: Node, index: int, hosts: tuple[str, ...]) -> HttpRoute:
    node.obj(S.HTTP_ROUTE)
    name_node = node.get("name")
    matches = node.get("match")
    dest_node = node.get("route")
    if dest_node is None:
        # redirect / directResponse / delegate were warned about by obj(); without a route there
        # is nothing meshns could do with the request, so applying it would silently misroute.
        node.fail("route is required (meshns implements only route destinations)")
    timeout = node.get("timeout")
    timeout_s = timeout.duration_s(allow_zero=True) if timeout else None
    retries = node.get("retries")
    fault = node.get("fault")
    return HttpRoute(
        name=name_node.str_() if name_node else f"http-{index}",
        matches=tuple(_match(m) for m in matches.list_()) if matches else (),
        destinations=_destinations(dest_node, hosts),
        retries=_retries(retries) if retries else RetryPolicy(),
        timeout_s=timeout_s or None,  # Istio: "0s" disables the route timeout
        fault=_fault(fault) if fault else None,
    )


def _match(node: Node) -> RouteMatch:
    node.obj(S.HTTP_MATCH)
    uri, method, headers = node.get("uri"), node.get("method"), node.get("headers")
    given = [k for k, v in node.items() if v.value is not None and k != "name"]
    if given and not (uri or method or headers):
        node.warn("has only conditions meshns ignores, so it matches every request")
    return RouteMatch(
        uri=_string_match(uri) if uri else None,
        method=_string_match(method) if method else None,
        headers=tuple(_header(k, v) for k, v in headers.items()) if headers else (),
    )


def _header(name: str, node: Node) -> HeaderMatch:
    if not _HEADER_NAME.fullmatch(name):
        node.fail("is not a valid HTTP header name")
    if node.value == {}:
        # Istio reads an empty header match as "header present, any value".
        return HeaderMatch(name.lower(), StringMatch("regex", ".*"))
    return HeaderMatch(name.lower(), _string_match(node))


def _string_match(node: Node) -> StringMatch:
    node.obj(S.STRING_MATCH)
    kinds = [k for k in _MATCH_KINDS if node.has(k)]
    if len(kinds) != 1:
        node.fail(f"must have exactly one of exact, prefix, regex, got {kinds or 'none'}")
    kind = kinds[0]
    value_node = node.req(kind)
    value = value_node.str_()
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            value_node.fail(f"is not a valid regular expression: {exc}")
    return StringMatch(kind, value)


def _destinations(node: Node, hosts: tuple[str, ...]) -> tuple[WeightedDestination, ...]:
    items = node.list_(non_empty=True)
    out: list[WeightedDestination] = []
    for item in items:
        item.obj(S.ROUTE_DESTINATION)
        dest = item.req("destination").obj(S.DESTINATION)
        host_node = dest.req("host")
        host = service_of_host(host_node)
        if set(hosts) != {host}:
            this = "this VirtualService's service" if len(hosts) == 1 else "every host of this VirtualService"
            host_node.fail(f"routing to another service is not supported yet ({host!r} is not {this}: "
                           f"{', '.join(hosts)})")
        subset = dest.get("subset")
        weight = item.get("weight")
        out.append(WeightedDestination(
            subset=subset.str_(pattern=DNS_LABEL, what="a subset name (DNS label)") if subset else None,
            weight=weight.int_(0, 100) if weight else 0,
        ))
    if len(out) == 1:
        # Istio: a single destination takes all traffic whatever its weight says.
        return (WeightedDestination(subset=out[0].subset, weight=100),)
    total = sum(d.weight for d in out)
    if total != 100:
        node.fail(f"weights must sum to 100 when there is more than one destination, got {total}")
    return tuple(out)


def _retries(node: Node) -> RetryPolicy:
    node.obj(S.HTTP_RETRY)
    attempts_node, per_try, retry_on = node.get("attempts"), node.get("perTryTimeout"), node.get("retryOn")
    if attempts_node is None:
        # proto3 can't tell "absent" from 0, and Istio reads attempts 0 as "retries disabled".
        node.warn("has no attempts: Istio reads that as 0, so retries are disabled")
    conditions, codes = _retry_on(retry_on) if retry_on else (DEFAULT_RETRY_ON, (503,))
    return RetryPolicy(
        attempts=attempts_node.int_(0, 1000) if attempts_node else 0,
        per_try_timeout_s=per_try.duration_s() if per_try else None,
        retry_on=conditions,
        retriable_status_codes=codes,
    )


def _retry_on(node: Node) -> tuple[tuple[str, ...], tuple[int, ...]]:
    conditions: dict[str, None] = {}  # ordered set: keeps the user's order, drops repeats
    codes: dict[int, None] = {}
    for word in (w.strip() for w in node.str_().split(",")):
        if _STATUS_CODE.fullmatch(word):
            codes[int(word)] = None
            conditions["retriable-status-codes"] = None
        elif word in RETRY_ON_CONDITIONS:
            conditions[word] = None
        elif word in S.ENVOY_RETRY_ON_NOT_IMPLEMENTED:
            node.warn(f"condition {word!r} is not implemented by meshns; ignored")
        else:
            known = ", ".join(sorted(RETRY_ON_CONDITIONS))
            node.fail(f"unknown retry condition {word!r} (use {known} or an HTTP status like 503)")
    return tuple(conditions), tuple(codes)


def _fault(node: Node) -> FaultPolicy:
    node.obj(S.FAULT)
    delay, abort = node.get("delay"), node.get("abort")
    delay_s = delay_pct = abort_pct = 0.0
    abort_status: int | None = None
    if delay is not None:
        delay.obj(S.FAULT_DELAY)
        delay_s = delay.req("fixedDelay").duration_s()
        delay_pct = _fault_percent(delay, "delayed")
    if abort is not None:
        abort.obj(S.FAULT_ABORT)
        status = abort.get("httpStatus")
        if status is None:
            abort.warn("has no httpStatus (only gRPC/HTTP2 aborts, not implemented): no request is aborted")
        else:
            abort_status = status.int_(200, 599)  # Istio's own validation range
            abort_pct = _fault_percent(abort, "aborted")
    return FaultPolicy(delay_s=delay_s if delay else None, delay_percent=delay_pct,
                       abort_status=abort_status, abort_percent=abort_pct)


def _fault_percent(node: Node, verb: str) -> float:
    percentage, percent = node.get("percentage"), node.get("percent")
    if percentage is not None:
        return percentage.percentage()
    if percent is not None:  # the deprecated integer form
        return float(percent.int_(0, 100))
    node.warn(f"has no percentage: as in Istio, no request is {verb}")
    return 0.0
