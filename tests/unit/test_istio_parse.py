"""meshns.istio.parse: Istio YAML -> typed ConfigDocs, every error path named, ignored fields warned."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshns.errors import UserError
from meshns.istio import (
    DestinationRuleSpec,
    VirtualServiceSpec,
    parse_documents,
    to_json,
    to_yaml,
)
from meshns.istio.reader import parse_duration_s
from meshns.snapshot import (
    DEFAULT_RETRY_ON,
    ConnectionPool,
    FaultPolicy,
    HeaderMatch,
    OutlierDetection,
    RetryPolicy,
    RouteMatch,
    StringMatch,
    Subset,
    WeightedDestination,
)

EXAMPLES = Path(__file__).parent / "istio_examples"


def example(name: str) -> str:
    return (EXAMPLES / name).read_text()


def vs_doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hosts": ["reviews"],
        "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}],
    }
    base.update(spec)
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews"}, "spec": base}


def dr_doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"host": "reviews"}
    base.update(spec)
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews"}, "spec": base}


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def parse_one(doc: dict[str, Any]) -> tuple[Any, list[str]]:
    result = parse_documents(dump(doc), "t.yaml")
    assert len(result.docs) == 1
    return result.docs[0].spec, result.warnings


def route0(**fields: Any) -> dict[str, Any]:
    """A VS document whose first http route has `fields` merged in."""
    doc = vs_doc()
    doc["spec"]["http"][0].update(fields)
    return doc


# -- the examples -------------------------------------------------------------------------------


def test_weighted_split_across_three_versions() -> None:
    result = parse_documents(example("reviews-weighted.yaml"), "reviews-weighted.yaml")
    assert result.warnings == []
    (doc,) = result.docs
    assert (doc.kind, doc.name, doc.namespace, doc.api_version) == (
        "VirtualService", "reviews", "default", "networking.istio.io/v1")
    assert isinstance(doc.spec, VirtualServiceSpec)
    assert doc.spec.hosts == ("reviews",)
    (route,) = doc.spec.http
    assert route.name == "http-0"
    assert route.matches == ()
    assert route.destinations == (WeightedDestination("v1", 50), WeightedDestination("v2", 30),
                                  WeightedDestination("v3", 20))
    assert route.retries == RetryPolicy()  # Istio's default policy when none is given
    assert route.timeout_s is None and route.fault is None


def test_header_routing_on_end_user() -> None:
    (doc,) = parse_documents(example("reviews-header-routing.yaml")).docs
    assert doc.namespace == "bookinfo"
    assert isinstance(doc.spec, VirtualServiceSpec)
    assert doc.spec.hosts == ("reviews",)  # FQDN -> its first label
    jason, rest = doc.spec.http
    assert jason.name == "jason"
    assert jason.matches == (RouteMatch(headers=(HeaderMatch("end-user", StringMatch("exact", "jason")),)),)
    assert jason.destinations == (WeightedDestination("v2", 100),)
    assert rest.matches == () and rest.destinations == (WeightedDestination("v1", 100),)


def test_retries_timeout_and_uri_method_match() -> None:
    (doc,) = parse_documents(example("ratings-retries.yaml")).docs
    assert isinstance(doc.spec, VirtualServiceSpec)
    (route,) = doc.spec.http
    assert route.matches == (RouteMatch(uri=StringMatch("prefix", "/ratings"),
                                        method=StringMatch("exact", "GET")),)
    assert route.timeout_s == 10.0
    assert route.retries == RetryPolicy(attempts=3, per_try_timeout_s=2.0,
                                        retry_on=("5xx", "connect-failure", "retriable-status-codes"),
                                        retriable_status_codes=(503,))


def test_fault_delay_and_abort() -> None:
    result = parse_documents(example("ratings-fault.yaml"))
    assert result.warnings == []
    (doc,) = result.docs
    assert isinstance(doc.spec, VirtualServiceSpec)
    assert doc.spec.http[0].fault == FaultPolicy(delay_s=7.0, delay_percent=100.0,
                                                 abort_status=500, abort_percent=10.0)
    assert doc.spec.http[1].fault is None


def test_destination_rules() -> None:
    result = parse_documents(example("destination-rules.yaml"), "dr.yaml")
    assert result.warnings == [
        "DestinationRule reviews: spec.subsets[1].trafficPolicy is not implemented by meshns; ignored"]
    reviews, ratings = (d.spec for d in result.docs)
    assert isinstance(reviews, DestinationRuleSpec) and isinstance(ratings, DestinationRuleSpec)
    assert reviews.host == "reviews"
    assert reviews.lb == "round_robin"
    assert reviews.pool == ConnectionPool(max_connections=100, connect_timeout_s=0.03, max_pending_requests=10,
                                          max_requests=1000, max_requests_per_connection=10,
                                          idle_timeout_s=90.0)
    assert reviews.outlier == OutlierDetection(consecutive_5xx=7, interval_s=300.0, base_ejection_s=900.0,
                                               max_ejection_percent=50.0)
    assert reviews.subsets == (Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),)),
                               Subset("v3", (("version", "v3"),)))
    assert ratings.host == "ratings" and ratings.lb == "least_request"  # LEAST_CONN alias
    assert ratings.pool == ConnectionPool() and ratings.outlier == OutlierDetection()


# One object per (kind, namespace, name) per apply: the two ratings VirtualServices go separately.
ONE_APPLY = ["destination-rules.yaml", "reviews-weighted.yaml", "ratings-retries.yaml"]


def test_several_examples_in_one_stream() -> None:
    text = "\n---\n".join(example(name) for name in ONE_APPLY)
    assert len(parse_documents(text).docs) == 4


# -- envelope ----------------------------------------------------------------------------------


def test_empty_documents_are_skipped_but_counted() -> None:
    text = "---\n---\n" + dump(vs_doc()) + "---\n# nothing\n"
    assert len(parse_documents(text).docs) == 1
    bad = vs_doc(hosts="reviews")
    with pytest.raises(UserError, match=r"^f.yaml doc 2 \(VirtualService reviews\): spec.hosts: must be a list"):
        parse_documents("---\n---\n" + dump(bad), "f.yaml")


def test_empty_input_is_no_documents() -> None:
    assert parse_documents("").docs == []
    assert parse_documents("# just a comment\n").warnings == []


def test_security_kinds_are_parsed() -> None:
    # Parsing of security.istio.io is covered in test_istio_security.py; here only the envelope.
    doc = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
           "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
    (parsed,) = parse_documents(dump(doc), "sec.yaml").docs
    assert (parsed.kind, parsed.namespace, parsed.api_version) == (
        "PeerAuthentication", "istio-system", "security.istio.io/v1")


@pytest.mark.parametrize(("api_version", "kind"), [
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v2", "VirtualService"),
    ("v1", "Service"),
    ("security.istio.io/v1", "RequestAuthentication"),
])
def test_other_kinds_are_refused_by_name(api_version: str, kind: str) -> None:
    doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(UserError, match=rf"^a.yaml doc 2 \({kind} x\): {api_version} {kind} is not supported"):
        parse_documents(dump(vs_doc(), doc), "a.yaml")


@pytest.mark.parametrize("api_version", ["networking.istio.io/v1", "networking.istio.io/v1beta1",
                                         "networking.istio.io/v1alpha3"])
def test_all_networking_versions_accepted(api_version: str) -> None:
    doc = vs_doc()
    doc["apiVersion"] = api_version
    assert parse_documents(dump(doc)).docs[0].api_version == api_version


def test_bad_yaml_names_the_source() -> None:
    with pytest.raises(UserError, match=r"^bad.yaml: not valid YAML"):
        parse_documents("a: [1, 2\n", "bad.yaml")


def test_duplicate_object_in_one_file() -> None:
    with pytest.raises(UserError, match=r"^x doc 2 \(VirtualService reviews\): VirtualService default/reviews is also defined by x doc 1$"):
        parse_documents(dump(vs_doc(), vs_doc()), "x")


def test_nothing_returned_if_a_later_document_is_bad() -> None:
    with pytest.raises(UserError, match=r"doc 3"):
        parse_documents(dump(vs_doc(), dr_doc(), dr_doc(host=5)))


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


class _Delete:
    def __repr__(self) -> str:
        return "<delete>"


_DELETE = _Delete()

# (document, dotted path to change, new value, expected message fragment incl. the field path)
ERRORS: list[tuple[dict[str, Any], str, Any, str]] = [
    (vs_doc(), "apiVersion", _DELETE, "doc 2: apiVersion: required"),
    (vs_doc(), "kind", 7, "doc 2: kind: must be a string, got 7"),
    (vs_doc(), "metadata", _DELETE, "doc 2: metadata: required"),
    (vs_doc(), "metadata.name", "Reviews", "metadata.name: must be a DNS-1123 subdomain name"),
    (vs_doc(), "metadata.name", "a" * 254, "metadata.name: must be a DNS-1123 subdomain name"),
    (vs_doc(), "metadata.namespace", "a.b", "metadata.namespace: must be a DNS-1123 label"),
    (vs_doc(), "metadata.nmae", "x", "metadata.nmae: unknown field (not in Istio's ObjectMeta); did you mean 'name'?"),
    (vs_doc(), "spce", {}, "spce: unknown field (not in Istio's document); did you mean 'spec'?"),
    (vs_doc(), "spec", _DELETE, "(VirtualService reviews): spec: required"),
    (vs_doc(), "spec", [], "spec: must be an object (VirtualService)"),
    (vs_doc(), "spec.hosts", [], "spec.hosts: must not be empty"),
    (vs_doc(), "spec.hosts", _DELETE, "spec.hosts: required"),
    (vs_doc(), "spec.hosts", ["*"], "spec.hosts[0]: wildcard hosts are not supported"),
    (vs_doc(), "spec.hosts", ["Reviews"], "spec.hosts[0]: must be a service name"),
    (vs_doc(), "spec.host", "reviews", "spec.host: unknown field (not in Istio's VirtualService); did you mean 'hosts'?"),
    (vs_doc(), "spec.http", {}, "spec.http: must be a list"),
    (vs_doc(), "spec.http.0.retires", {}, "spec.http[0].retires: unknown field (not in Istio's HTTPRoute); did you mean 'retries'?"),
    (vs_doc(), "spec.http.0.route", _DELETE, "spec.http[0]: route is required"),
    (vs_doc(), "spec.http.0.route", [], "spec.http[0].route: must not be empty"),
    (vs_doc(), "spec.http.0.route.0.destination", _DELETE, "spec.http[0].route[0].destination: required"),
    (vs_doc(), "spec.http.0.route.0.destination.host", "ratings",
     "spec.http[0].route[0].destination.host: routing to another service is not supported yet"),
    (vs_doc(), "spec.http.0.route.0.destination.subset", "V1", "spec.http[0].route[0].destination.subset: must be a subset name"),
    (vs_doc(), "spec.http.0.route.0.weight", "x", 'spec.http[0].route[0].weight: must be an integer 0..100, got "x"'),
    (vs_doc(), "spec.http.0.route.0.weight", 101, "spec.http[0].route[0].weight: must be an integer 0..100, got 101"),
    (vs_doc(), "spec.http.0.route.0.weight", True, "spec.http[0].route[0].weight: must be an integer 0..100, got true"),
    (vs_doc(), "spec.http.0.route.0.wieght", 1, "spec.http[0].route[0].wieght: unknown field"),
    (vs_doc(), "spec.http.0.timeout", "10", 'spec.http[0].timeout: must be a duration like "1s"'),
    (vs_doc(), "spec.http.0.timeout", "-1s", "spec.http[0].timeout: must be a duration"),
    (vs_doc(), "spec.http.0.match", [{"uri": {}}], "spec.http[0].match[0].uri: must have exactly one of exact, prefix, regex, got none"),
    (vs_doc(), "spec.http.0.match", [{"uri": {"exact": "/a", "prefix": "/"}}], "spec.http[0].match[0].uri: must have exactly one"),
    (vs_doc(), "spec.http.0.match", [{"uri": {"suffix": "/a"}}], "spec.http[0].match[0].uri.suffix: unknown field (not in Istio's StringMatch)"),
    (vs_doc(), "spec.http.0.match", [{"uri": {"regex": "("}}], "spec.http[0].match[0].uri.regex: is not a valid regular expression"),
    (vs_doc(), "spec.http.0.match", [{"method": {"exact": 1}}], "spec.http[0].match[0].method.exact: must be a string"),
    (vs_doc(), "spec.http.0.match", [{"headers": {"bad header": {"exact": "x"}}}], "spec.http[0].match[0].headers.bad header: is not a valid HTTP header name"),
    (vs_doc(), "spec.http.0.match", [{"headers": ["end-user"]}], "spec.http[0].match[0].headers: must be an object"),
    (vs_doc(), "spec.http.0.match", [{"urii": {}}], "spec.http[0].match[0].urii: unknown field (not in Istio's HTTPMatchRequest); did you mean 'uri'?"),
    (vs_doc(), "spec.http.0.match", {"uri": {"prefix": "/"}}, "spec.http[0].match: must be a list"),
    (route0(retries={"attempts": -1}), "spec.http.0.retries.attempts", -1, "spec.http[0].retries.attempts: must be an integer 0..1000"),
    (route0(retries={"attempts": 2}), "spec.http.0.retries.perTryTimeout", "2", "spec.http[0].retries.perTryTimeout: must be a duration"),
    (route0(retries={"attempts": 2}), "spec.http.0.retries.perTryTimeout", "0s", "spec.http[0].retries.perTryTimeout: must be a positive duration"),
    (route0(retries={"attempts": 2}), "spec.http.0.retries.retryOn", "5xx,bogus", "spec.http[0].retries.retryOn: unknown retry condition 'bogus'"),
    (route0(retries={"attempts": 2}), "spec.http.0.retries.retryOn", "5xx,,503", "spec.http[0].retries.retryOn: unknown retry condition ''"),
    (route0(retries={"attempts": 2}), "spec.http.0.retries.retryOn", "5xx,5030", "unknown retry condition '5030'"),
    (route0(retries={"attempts": 2}), "spec.http.0.retries.retyOn", "5xx", "spec.http[0].retries.retyOn: unknown field (not in Istio's HTTPRetry); did you mean 'retryOn'?"),
    (route0(fault={"delay": {"percentage": {"value": 5}}}), "spec.http.0.fault.delay.percentage.value", 5,
     "spec.http[0].fault.delay.fixedDelay: required"),
    (route0(fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 5}}}), "spec.http.0.fault.delay.percentage.value", 101,
     "spec.http[0].fault.delay.percentage.value: must be a number 0..100, got 101"),
    (route0(fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 5}}}), "spec.http.0.fault.delay.percentage.vaule", 1,
     "spec.http[0].fault.delay.percentage.vaule: unknown field (not in Istio's Percent); did you mean 'value'?"),
    (route0(fault={"delay": {"fixedDelay": "1s", "percent": 5}}), "spec.http.0.fault.delay.percent", 5.5,
     "spec.http[0].fault.delay.percent: must be an integer 0..100"),
    (route0(fault={"abort": {"httpStatus": 500}}), "spec.http.0.fault.abort.httpStatus", 99,
     "spec.http[0].fault.abort.httpStatus: must be an integer 200..599, got 99"),
    (route0(fault={"abort": {"httpStatus": 500}}), "spec.http.0.fault.abort.percentage", 50,
     "spec.http[0].fault.abort.percentage: must be an object (Percent), got 50"),
    (route0(fault={"abort": {"httpStatus": 500}}), "spec.http.0.fault.exponentialDelay", {},
     "spec.http[0].fault.exponentialDelay: unknown field (not in Istio's HTTPFaultInjection)"),
    (dr_doc(), "spec.host", _DELETE, "(DestinationRule reviews): spec.host: required"),
    (dr_doc(), "spec.hosts", ["reviews"], "spec.hosts: unknown field (not in Istio's DestinationRule); did you mean 'host'?"),
    (dr_doc(), "spec.trafficPolicy", {"loadBalancer": {"simple": "FASTEST"}}, "spec.trafficPolicy.loadBalancer.simple: must be one of"),
    (dr_doc(), "spec.trafficPolicy", {"loadbalancer": {}}, "spec.trafficPolicy.loadbalancer: unknown field (not in Istio's TrafficPolicy); did you mean 'loadBalancer'?"),
    (dr_doc(), "spec.trafficPolicy", {"connectionPool": {"tcp": {"maxConnections": 0}}},
     "spec.trafficPolicy.connectionPool.tcp.maxConnections: must be an integer 1..2147483647, got 0"),
    (dr_doc(), "spec.trafficPolicy", {"connectionPool": {"tcp": {"connectTimeout": 5}}},
     "spec.trafficPolicy.connectionPool.tcp.connectTimeout: must be a duration"),
    (dr_doc(), "spec.trafficPolicy", {"connectionPool": {"http": {"http1MaxPendingRequests": "10"}}},
     'spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests: must be an integer 1..2147483647, got "10"'),
    (dr_doc(), "spec.trafficPolicy", {"connectionPool": {"http": {"maxRequestsPerConnection": -1}}},
     "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection: must be an integer 0.."),
    (dr_doc(), "spec.trafficPolicy", {"connectionPool": {"http": {"idleTimeout": "0s"}}},
     "spec.trafficPolicy.connectionPool.http.idleTimeout: must be a positive duration"),
    (dr_doc(), "spec.trafficPolicy", {"connectionPool": {"udp": {}}},
     "spec.trafficPolicy.connectionPool.udp: unknown field (not in Istio's ConnectionPoolSettings)"),
    (dr_doc(), "spec.trafficPolicy", {"outlierDetection": {"maxEjectionPercent": 150}},
     "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be an integer 0..100, got 150"),
    (dr_doc(), "spec.trafficPolicy", {"outlierDetection": {"interval": "often"}},
     'spec.trafficPolicy.outlierDetection.interval: must be a duration like "1s", "250ms" or "1.5m", got "often"'),
    (dr_doc(), "spec.trafficPolicy", {"outlierDetection": {"consecutive5xxErrors": -1}},
     "spec.trafficPolicy.outlierDetection.consecutive5xxErrors: must be an integer 0.."),
    (dr_doc(), "spec.subsets", [{"labels": {"version": "v1"}}], "spec.subsets[0].name: required"),
    (dr_doc(), "spec.subsets", [{"name": "v1"}, {"name": "v1"}], "spec.subsets[1].name: duplicate subset name 'v1'"),
    (dr_doc(), "spec.subsets", [{"name": "v1", "labels": {"version": 1}}], "spec.subsets[0].labels.version: must be a string"),
    (dr_doc(), "spec.subsets", [{"name": "v1", "labels": {1: "a"}}], "spec.subsets[0].labels: keys must be strings"),
    (dr_doc(), "spec.subsets", [{"name": "v1", "lables": {}}], "spec.subsets[0].lables: unknown field (not in Istio's Subset); did you mean 'labels'?"),
    (dr_doc(), "spec.subsets", [{"name": "v_1"}], "spec.subsets[0].name: must be a subset name"),
    (dr_doc(), "metadata.labels", {"a": float("nan")}, "metadata.labels.a: must be a finite number"),
]


@pytest.mark.parametrize(("doc", "path", "value", "expected"), ERRORS,
                         ids=[f"{e[1]}={e[2]!r}"[:60] for e in ERRORS])
def test_errors_name_the_document_and_field(doc: dict[str, Any], path: str, value: Any, expected: str) -> None:
    bad = _set(doc, path, value)
    with pytest.raises(UserError) as info:
        parse_documents(dump(vs_doc() if bad["kind"] != "VirtualService" else dr_doc(), bad), "in.yaml")
    message = str(info.value)
    assert message.startswith("in.yaml doc 2")
    assert expected in message


def test_error_message_shape_from_the_brief() -> None:
    doc = vs_doc(http=[{"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                                  {"destination": {"host": "reviews", "subset": "v2"}, "weight": "x"}]}])
    text = dump(dr_doc(), doc)
    with pytest.raises(UserError, match=r'^reviews.yaml doc 2 \(VirtualService reviews\): '
                                        r'spec.http\[0\].route\[1\].weight: must be an integer 0..100, got "x"$'):
        parse_documents(text, "reviews.yaml")


def test_yaml_dates_are_refused_not_stringified() -> None:
    text = dump(vs_doc()).replace("name: reviews", "name: reviews\n  annotations:\n    since: 2024-01-01", 1)
    with pytest.raises(UserError, match=r"metadata.annotations.since: .*YAML date 2024-01-01 \(quote it\)"):
        parse_documents(text)


# -- weights -----------------------------------------------------------------------------------


def _weights(*weights: int | None) -> dict[str, Any]:
    routes = []
    for i, w in enumerate(weights):
        r: dict[str, Any] = {"destination": {"host": "reviews", "subset": f"v{i}"}}
        if w is not None:
            r["weight"] = w
        routes.append(r)
    return vs_doc(http=[{"route": routes}])


@pytest.mark.parametrize("weights", [(100,), (None,), (0,), (37,), (50, 50), (100, 0), (20, 30, 50), (0, 100, 0)])
def test_weights_accepted(weights: tuple[int | None, ...]) -> None:
    spec, _ = parse_one(_weights(*weights))
    dests = spec.http[0].destinations
    assert sum(d.weight for d in dests) == 100
    if len(weights) == 1:
        assert dests[0].weight == 100  # a single destination takes all traffic, as in Istio


@pytest.mark.parametrize(("weights", "total"), [((50, None), 50), ((50, 49), 99), ((None, None), 0),
                                                ((60, 60), 120)])
def test_weights_must_sum_to_100(weights: tuple[int | None, ...], total: int) -> None:
    with pytest.raises(UserError, match=rf"spec.http\[0\].route: weights must sum to 100 .*got {total}$"):
        parse_one(_weights(*weights))


@settings(deadline=None)
@given(st.lists(st.integers(0, 100), min_size=2, max_size=6))
def test_weights_property(weights: list[int]) -> None:
    if sum(weights) == 100:
        spec, _ = parse_one(_weights(*weights))
        assert [d.weight for d in spec.http[0].destinations] == weights
    else:
        with pytest.raises(UserError, match="must sum to 100"):
            parse_one(_weights(*weights))


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("0.5s", 0.5), ("250ms", 0.25), ("1m", 60.0), ("1h", 3600.0), ("1.5s", 1.5),
    ("1m30s", 90.0), ("100us", 1e-4), ("100µs", 1e-4), ("5000ns", 5e-6), (".5s", 0.5), ("1.s", 1.0),
    ("0s", 0.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1 s", "-1s", "+1s", "1d", "1S", "1.2.3s", "1s ", "1e3s", "PT1S"])
def test_not_durations(text: str) -> None:
    assert parse_duration_s(text) is None


@given(st.integers(1, 10**6), st.sampled_from([("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]))
def test_duration_property(n: int, unit: tuple[str, float]) -> None:
    assert parse_duration_s(f"{n}{unit[0]}") == pytest.approx(n * unit[1])


def test_zero_timeout_disables_the_route_timeout() -> None:
    spec, _ = parse_one(route0(timeout="0s"))
    assert spec.http[0].timeout_s is None


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_on", "conditions", "codes"), [
    ("5xx", ("5xx",), ()),
    ("503", ("retriable-status-codes",), (503,)),
    ("gateway-error, 502 ,504,502", ("gateway-error", "retriable-status-codes"), (502, 504)),
    ("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
     ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"), ()),
    ("reset,deadline-exceeded,internal,resource-exhausted", ("reset", "deadline-exceeded", "internal",
                                                               "resource-exhausted"), ()),
])
def test_retry_on(retry_on: str, conditions: tuple[str, ...], codes: tuple[int, ...]) -> None:
    spec, warnings = parse_one(route0(retries={"attempts": 2, "retryOn": retry_on}))
    assert spec.http[0].retries == RetryPolicy(attempts=2, retry_on=conditions, retriable_status_codes=codes)
    assert warnings == []


def test_retries_without_retry_on_keep_istio_default_conditions() -> None:
    spec, _ = parse_one(route0(retries={"attempts": 5}))
    assert spec.http[0].retries == RetryPolicy(attempts=5, retry_on=DEFAULT_RETRY_ON, retriable_status_codes=(503,))


def test_attempts_zero_disables_and_missing_attempts_is_zero_with_a_warning() -> None:
    spec, warnings = parse_one(route0(retries={"attempts": 0}))
    assert spec.http[0].retries.attempts == 0 and warnings == []
    spec, warnings = parse_one(route0(retries={"perTryTimeout": "1s"}))
    assert spec.http[0].retries.attempts == 0
    assert warnings == ["VirtualService reviews: spec.http[0].retries has no attempts: Istio reads that as 0, "
                        "so retries are disabled"]


def test_envoy_retry_conditions_meshns_lacks_are_warned_and_dropped() -> None:
    spec, warnings = parse_one(route0(retries={"attempts": 1, "retryOn": "retriable-4xx,5xx"}))
    assert spec.http[0].retries.retry_on == ("5xx",)
    assert warnings == ["VirtualService reviews: spec.http[0].retries.retryOn condition 'retriable-4xx' "
                        "is not implemented by meshns; ignored"]


# -- faults and matches --------------------------------------------------------------------------


def test_fault_legacy_percent_and_missing_percentage() -> None:
    spec, warnings = parse_one(route0(fault={"delay": {"fixedDelay": "250ms", "percent": 30},
                                             "abort": {"httpStatus": 503}}))
    assert spec.http[0].fault == FaultPolicy(delay_s=0.25, delay_percent=30.0, abort_status=503, abort_percent=0.0)
    assert warnings == ["VirtualService reviews: spec.http[0].fault.abort has no percentage: as in Istio, "
                        "no request is aborted"]


def test_grpc_abort_is_warned() -> None:
    spec, warnings = parse_one(route0(fault={"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 1}}}))
    assert spec.http[0].fault == FaultPolicy()
    assert "spec.http[0].fault.abort.grpcStatus is not implemented by meshns; ignored" in warnings[0]


def test_matches_regex_header_presence_and_case() -> None:
    spec, _ = parse_one(route0(match=[
        {"uri": {"regex": "/api/v[0-9]+"}, "headers": {"X-User": {"prefix": "a"}, "x-canary": {}}},
        {"method": {"exact": "POST"}},
    ]))
    assert spec.http[0].matches == (
        RouteMatch(uri=StringMatch("regex", "/api/v[0-9]+"),
                   headers=(HeaderMatch("x-user", StringMatch("prefix", "a")),
                            HeaderMatch("x-canary", StringMatch("regex", ".*")))),
        RouteMatch(method=StringMatch("exact", "POST")),
    )


# -- warnings for valid Istio that meshns ignores ------------------------------------------------


WARNINGS: list[tuple[dict[str, Any], str]] = [
    (route0(corsPolicy={"allowOrigins": [{"exact": "*"}]}), "VirtualService reviews: spec.http[0].corsPolicy"),
    (route0(mirror={"host": "reviews"}), "VirtualService reviews: spec.http[0].mirror"),
    (route0(rewrite={"uri": "/"}), "VirtualService reviews: spec.http[0].rewrite"),
    (route0(headers={"request": {"set": {"x": "1"}}}), "VirtualService reviews: spec.http[0].headers"),
    (route0(redirect={"uri": "/x"}), "VirtualService reviews: spec.http[0].redirect"),
    (vs_doc(tcp=[{"route": []}]), "VirtualService reviews: spec.tcp"),
    (vs_doc(exportTo=["."]), "VirtualService reviews: spec.exportTo"),
    (route0(match=[{"queryParams": {"a": {"exact": "1"}}, "uri": {"prefix": "/"}}]),
     "VirtualService reviews: spec.http[0].match[0].queryParams"),
    (route0(route=[{"destination": {"host": "reviews", "port": {"number": 9080}}, "headers": {}}]),
     "VirtualService reviews: spec.http[0].route[0].destination.port"),
    (route0(retries={"attempts": 1, "retryRemoteLocalities": True}),
     "VirtualService reviews: spec.http[0].retries.retryRemoteLocalities"),
    (dr_doc(exportTo=["."]), "DestinationRule reviews: spec.exportTo"),
    (dr_doc(trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}}), "DestinationRule reviews: spec.trafficPolicy.tls"),
    (dr_doc(trafficPolicy={"loadBalancer": {"consistentHash": {"httpHeaderName": "x"}}}),
     "DestinationRule reviews: spec.trafficPolicy.loadBalancer.consistentHash"),
    (dr_doc(trafficPolicy={"connectionPool": {"http": {"maxRetries": 3}}}),
     "DestinationRule reviews: spec.trafficPolicy.connectionPool.http.maxRetries"),
    (dr_doc(trafficPolicy={"connectionPool": {"tcp": {"tcpKeepalive": {"time": "7200s"}}}}),
     "DestinationRule reviews: spec.trafficPolicy.connectionPool.tcp.tcpKeepalive"),
    (dr_doc(trafficPolicy={"outlierDetection": {"minHealthPercent": 50}}),
     "DestinationRule reviews: spec.trafficPolicy.outlierDetection.minHealthPercent"),
    (dr_doc(workloadSelector={"matchLabels": {"app": "x"}}), "DestinationRule reviews: spec.workloadSelector"),
]


@pytest.mark.parametrize(("doc", "prefix"), WARNINGS, ids=[w[1].split(": ")[1] for w in WARNINGS])
def test_unimplemented_fields_are_warned_by_name(doc: dict[str, Any], prefix: str) -> None:
    _, warnings = parse_one(doc)
    assert f"{prefix} is not implemented by meshns; ignored" in warnings


def test_warnings_for_other_cases() -> None:
    _, w = parse_one(vs_doc(gateways=["mesh"]))
    assert w == []
    _, w = parse_one(vs_doc(gateways=["bookinfo-gateway", "mesh"]))
    assert w == ['VirtualService reviews: spec.gateways other than "mesh" is not implemented by meshns; ignored']
    spec, w = parse_one(dr_doc(trafficPolicy={"loadBalancer": {"simple": "PASSTHROUGH"}}))
    assert spec.lb == "least_request"
    assert w == ["DestinationRule reviews: spec.trafficPolicy.loadBalancer.simple PASSTHROUGH is not implemented "
                 "by meshns; using LEAST_REQUEST"]
    _, w = parse_one(route0(match=[{"port": 9080}]))
    assert "spec.http[0].match[0] has only conditions meshns ignores, so it matches every request" in w[-1]


def test_outlier_legacy_alias_and_disable() -> None:
    spec, w = parse_one(dr_doc(trafficPolicy={"outlierDetection": {"consecutiveErrors": 3}}))
    assert spec.outlier == OutlierDetection(consecutive_5xx=3) and w == []
    spec, w = parse_one(dr_doc(trafficPolicy={"outlierDetection": {"consecutiveErrors": 3, "consecutive5xxErrors": 4}}))
    assert spec.outlier.consecutive_5xx == 4 and "consecutiveErrors is the deprecated name" in w[0]
    spec, _ = parse_one(dr_doc(trafficPolicy={"outlierDetection": {"consecutive5xxErrors": 0}}))
    assert not spec.outlier.enabled
    spec, _ = parse_one(dr_doc(trafficPolicy={"outlierDetection": {"consecutive5xxErrors": 0,
                                                                    "consecutiveGatewayErrors": 2}}))
    assert spec.outlier.enabled and spec.outlier.consecutive_gateway_errors == 2


def test_kubectl_output_envelope_is_accepted_with_warnings() -> None:
    doc = vs_doc()
    doc["metadata"].update({"uid": "1234", "resourceVersion": "42", "labels": {"app": "reviews"}})
    doc["status"] = {}
    result = parse_documents(dump(doc))
    assert result.warnings == [
        "VirtualService reviews: status is not implemented by meshns; ignored",
        "VirtualService reviews: metadata.uid is not implemented by meshns; ignored",
        "VirtualService reviews: metadata.resourceVersion is not implemented by meshns; ignored",
    ]


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [*(example(p.name) for p in sorted(EXAMPLES.glob("*.yaml"))),
                                  "\n---\n".join(example(name) for name in ONE_APPLY)])
def test_round_trip_of_every_example(text: str) -> None:
    docs = parse_documents(text).docs
    assert parse_documents(to_yaml(docs)).docs == docs
    assert parse_documents(to_json(docs)).docs == docs
    assert json.loads(to_json(docs))["items"] == [d.raw for d in docs]


def test_render_keeps_key_order_and_spelling() -> None:
    text = example("destination-rules.yaml")
    out = to_yaml(parse_documents(text).docs)
    assert out.index("host: reviews") < out.index("trafficPolicy:") < out.index("subsets:")
    assert "simple: LEAST_CONN" in out


_names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_durations = st.builds(lambda n, u: f"{n}{u}", st.integers(1, 5000), st.sampled_from(["ms", "s", "m"]))
_string_match = st.builds(lambda k, v: {k: v}, st.sampled_from(["exact", "prefix"]), st.text(max_size=10))


@st.composite
def _vs_documents(draw: st.DrawFn) -> dict[str, Any]:
    routes = []
    for _ in range(draw(st.integers(1, 4))):
        subsets = draw(st.lists(_names, min_size=1, max_size=3, unique=True))
        cut = sorted(draw(st.lists(st.integers(0, 100), min_size=len(subsets) - 1, max_size=len(subsets) - 1)))
        weights = [b - a for a, b in zip([0, *cut], [*cut, 100], strict=True)]
        route: dict[str, Any] = {"route": [{"destination": {"host": "svc", "subset": s}, "weight": w}
                                           for s, w in zip(subsets, weights, strict=True)]}
        if draw(st.booleans()):
            route["match"] = [{"uri": draw(_string_match), "headers": {draw(_names): draw(_string_match)}}]
        if draw(st.booleans()):
            route["timeout"] = draw(_durations)
        if draw(st.booleans()):
            route["retries"] = {"attempts": draw(st.integers(0, 5)), "perTryTimeout": draw(_durations),
                                "retryOn": ",".join(draw(st.lists(st.sampled_from(["5xx", "reset", "503", "502"]),
                                                                  min_size=1)))}
        routes.append(route)
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": draw(_names), "namespace": draw(_names)},
            "spec": {"hosts": ["svc"], "http": routes}}


@settings(deadline=None)
@given(st.lists(_vs_documents(), min_size=1, max_size=3, unique_by=lambda d: d["metadata"]["name"]))
def test_round_trip_property(raw_docs: list[dict[str, Any]]) -> None:
    docs = parse_documents(dump(*raw_docs)).docs
    assert [d.raw for d in docs] == raw_docs
    assert parse_documents(to_yaml(docs)).docs == docs
    assert parse_documents(to_json(docs)).docs == docs


@pytest.mark.parametrize("value", ["a\x85b", "line\u2028sep", "para\u2029", "c1\x9b\x80", "del\x7f", "😀 astral",
                                   "tab\tand \"quotes\" 'both'", "yes", "1.5", "null", "", " lead", "#x"])
def test_round_trip_of_awkward_strings(value: str) -> None:
    doc = vs_doc(http=[{"match": [{"headers": {"x-v": {"exact": value}}}],
                        "route": [{"destination": {"host": "reviews"}}]}])
    doc["metadata"]["annotations"] = {value or "k": value}
    docs = parse_documents(dump(doc)).docs
    assert docs[0].raw == doc
    assert parse_documents(to_yaml(docs)).docs == docs
    assert parse_documents(to_json(docs)).docs == docs


def test_json_surrogate_escapes_are_joined_and_lone_ones_refused() -> None:
    doc = vs_doc()
    doc["metadata"]["annotations"] = {"note": "😀 x"}
    escaped = json.dumps(doc)  # ensure_ascii: "\ud83d\ude00"
    assert "\\ud83d\\ude00" in escaped
    (parsed,) = parse_documents(escaped).docs
    assert parsed.raw == doc
    with pytest.raises(UserError, match=r"metadata.annotations.note: contains an unpaired UTF-16 surrogate"):
        parse_documents(escaped.replace("\\ude00", ""))


def test_raw_does_not_share_yaml_anchors() -> None:
    text = dump(dr_doc()).replace("host: reviews", "host: reviews\n  subsets:\n  - &s {name: v1, labels: &l {a: b}}")
    text += "  - {name: v2, labels: *l}\n"
    (doc,) = parse_documents(text).docs
    assert doc.raw["spec"]["subsets"][0]["labels"] is not doc.raw["spec"]["subsets"][1]["labels"]
