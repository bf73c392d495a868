"""meshns.istio.compile: applied VirtualServices/DestinationRules -> one service's ServicePolicy."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshns.istio import ConfigDoc, ServicePolicy, compile_service, parse_documents
from meshns.snapshot import (
    ConnectionPool,
    FaultPolicy,
    HeaderMatch,
    HttpRoute,
    OutlierDetection,
    RetryPolicy,
    RouteMatch,
    StringMatch,
    Subset,
    WeightedDestination,
)

EXAMPLES = Path(__file__).parent / "istio_examples"


def load(name: str) -> list[ConfigDoc]:
    return parse_documents((EXAMPLES / name).read_text(), name).docs


def split(docs: list[ConfigDoc]) -> tuple[list[ConfigDoc], list[ConfigDoc]]:
    return ([d for d in docs if d.kind == "VirtualService"], [d for d in docs if d.kind == "DestinationRule"])


DRS = load("destination-rules.yaml")


def vs(text: str, name: str = "reviews") -> ConfigDoc:
    head = f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n"
    (doc,) = parse_documents(head + text).docs
    return doc


def test_nothing_applied_gives_the_defaults() -> None:
    policy = compile_service("reviews", [], [])
    assert policy == ServicePolicy(routes=(HttpRoute(),), subsets=(), lb="least_request", pool=ConnectionPool(),
                                   outlier=OutlierDetection(), warnings=())
    assert policy.routes[0].retries == RetryPolicy(attempts=2)  # Istio's default: 2 retries


def test_documents_for_other_services_do_not_apply() -> None:
    assert compile_service("details", load("reviews-weighted.yaml"), DRS) == ServicePolicy()


def test_weighted_split_with_destination_rule() -> None:
    policy = compile_service("reviews", load("reviews-weighted.yaml"), DRS)
    assert policy.warnings == ()
    (route,) = policy.routes  # no match conditions: it is the catch-all already
    assert route.destinations == (WeightedDestination("v1", 50), WeightedDestination("v2", 30),
                                  WeightedDestination("v3", 20))
    assert [s.name for s in policy.subsets] == ["v1", "v2", "v3"]
    assert policy.lb == "round_robin"
    assert policy.pool.max_connections == 100 and policy.pool.max_pending_requests == 10
    assert policy.outlier.consecutive_5xx == 7 and policy.outlier.max_ejection_percent == 50.0


def test_header_routing_gets_a_catch_all_only_when_needed() -> None:
    policy = compile_service("reviews", load("reviews-header-routing.yaml"), DRS)
    assert [r.name for r in policy.routes] == ["jason", "http-1"]  # last route matches everything already
    assert policy.routes[0].matches == (
        RouteMatch(headers=(HeaderMatch("end-user", StringMatch("exact", "jason")),)),)

    only_jason = vs("  hosts: [reviews]\n  http:\n  - match: [{headers: {end-user: {exact: jason}}}]\n"
                    "    route: [{destination: {host: reviews, subset: v2}}]\n")
    policy = compile_service("reviews", [only_jason], DRS)
    assert [r.name for r in policy.routes] == ["http-0", "default"]
    assert policy.routes[-1] == HttpRoute()  # unmatched requests: every endpoint, default retries


def test_retries_fault_and_timeout_pass_through() -> None:
    vss, drs = load("ratings-retries.yaml"), DRS
    (route, catch_all) = compile_service("ratings", vss, drs).routes
    assert route.retries == RetryPolicy(attempts=3, per_try_timeout_s=2.0,
                                        retry_on=("5xx", "connect-failure", "retriable-status-codes"),
                                        retriable_status_codes=(503,))
    assert route.timeout_s == 10.0
    assert catch_all == HttpRoute()
    fault = compile_service("ratings", load("ratings-fault.yaml"), drs).routes[0].fault
    assert fault == FaultPolicy(delay_s=7.0, delay_percent=100.0, abort_status=500, abort_percent=10.0)


def test_retries_disabled_with_zero_attempts() -> None:
    doc = vs("  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 0}\n")
    (route,) = compile_service("reviews", [doc], []).routes
    assert route.retries.attempts == 0
    assert route.destinations == (WeightedDestination(None, 100),)


def test_virtual_service_without_http_keeps_default_route() -> None:
    doc = vs("  hosts: [reviews]\n")
    assert compile_service("reviews", [doc], []).routes == (HttpRoute(),)


def test_missing_subset_is_warned_and_kept() -> None:
    policy = compile_service("reviews", load("reviews-weighted.yaml"), [])
    assert policy.routes[0].destinations[2] == WeightedDestination("v3", 20)  # data plane answers 503
    assert policy.warnings == tuple(
        f"VirtualService reviews: spec.http[0].route[{i}].destination.subset: subset 'v{i + 1}' is not "
        "defined by any DestinationRule for reviews; requests routed there fail with 503" for i in range(3))

    only_v1 = parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\n"
        "spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}\n").docs
    policy = compile_service("reviews", load("reviews-weighted.yaml"), only_v1)
    assert policy.subsets == (Subset("v1", (("version", "v1"),)),)
    assert len(policy.warnings) == 2 and "'v2'" in policy.warnings[0] and "'v3'" in policy.warnings[1]


def test_several_documents_for_one_service_first_applied_wins() -> None:
    older = load("ratings-retries.yaml")[0]
    newer = load("ratings-fault.yaml")[0]
    newer = ConfigDoc(kind=newer.kind, name="ratings-fault", namespace=newer.namespace,
                      api_version=newer.api_version, spec=newer.spec, raw=newer.raw)
    policy = compile_service("ratings", [older, newer], DRS)
    assert policy.routes[0].timeout_s == 10.0  # from the older one
    assert policy.warnings == ("VirtualServices ratings, ratings-fault all apply to ratings; meshns uses ratings "
                               "(applied first) and ignores ratings-fault",)

    second_dr = parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-2}\n"
        "spec: {host: reviews.default.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n").docs
    policy = compile_service("reviews", [], [*DRS, *second_dr])
    assert policy.lb == "round_robin"
    assert policy.warnings == ("DestinationRules reviews, reviews-2 all apply to reviews; meshns uses reviews "
                               "(applied first) and ignores reviews-2",)


def test_multi_host_virtual_service_applies_to_each_spelling() -> None:
    doc = vs("  hosts: [reviews, reviews.default.svc.cluster.local]\n  http:\n"
             "  - route: [{destination: {host: reviews.default.svc.cluster.local}}]\n")
    assert compile_service("reviews", [doc], []).routes[0].destinations == (WeightedDestination(None, 100),)


def test_wrong_kind_in_a_list_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="DestinationRule reviews passed where a VirtualServiceSpec"):
        compile_service("reviews", DRS, [])


def test_round_robin_and_lb_aliases_end_to_end() -> None:
    vss, drs = split(load("destination-rules.yaml"))
    assert vss == []
    assert compile_service("ratings", [], drs).lb == "least_request"  # LEAST_CONN
    assert compile_service("reviews", [], drs).lb == "round_robin"
