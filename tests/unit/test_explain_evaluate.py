"""intercept.evaluate: the nat OUTPUT walk, table-tested against the real plan; explain's pure parts."""

from __future__ import annotations

import pytest

from meshns.errors import UserError
from meshns.intercept.evaluate import evaluate_output
from meshns.intercept.plan import Operand, Owner, Rule, RulePlan, Target, TcpDport, plan_rules
from meshns.intercept.spec import InterceptSpec
from meshns.netns import explain
from meshns.snapshot import Endpoint, Service, ServicePort, Snapshot

POD_IP = "10.188.0.5"
PLAN = plan_rules(InterceptSpec(exclude_outbound_ports=(9999,), exclude_outbound_cidrs=("10.1.0.0/16",)))

# (case, dst ip, port, uid, out interface) -> (captured, chain, rule comment, target port)
CASES = [
    ("service VIP", "10.189.0.7", 9080, 0, "eth0",
     (True, "MESHNS_REDIRECT", "meshns: to outbound listener", 15001)),
    ("other pod", "10.188.0.9", 8080, 0, "eth0",
     (True, "MESHNS_REDIRECT", "meshns: to outbound listener", 15001)),
    ("own pod address", POD_IP, 8080, 0, "lo",
     (False, "MESHNS_OUTPUT", "meshns: app on loopback, not proxy uid", None)),
    ("localhost", "127.0.0.1", 8080, 0, "lo",
     (False, "MESHNS_OUTPUT", "meshns: app on loopback, not proxy uid", None)),
    ("excluded port", "10.188.0.9", 9999, 0, "eth0",
     (False, "MESHNS_OUTPUT", "meshns: outbound port 9999 excluded", None)),
    ("excluded CIDR", "10.1.2.3", 80, 0, "eth0",
     (False, "MESHNS_OUTPUT", "meshns: outbound CIDR 10.1.0.0/16 excluded", None)),
    ("proxy uid upstream", "10.188.0.9", 8080, 1337, "eth0",
     (False, "MESHNS_OUTPUT", "meshns: loop breaker: proxy uid 1337", None)),
    ("proxy uid to own address", POD_IP, 8080, 1337, "lo",
     (True, "MESHNS_IN_REDIRECT", "meshns: to inbound listener", 15006)),
    ("proxy uid to localhost", "127.0.0.1", 9080, 1337, "lo",
     (False, "MESHNS_OUTPUT", "meshns: loop breaker: proxy uid 1337", None)),
]


@pytest.mark.parametrize(("case", "ip", "port", "uid", "iface", "want"), CASES, ids=[c[0] for c in CASES])
def test_evaluate_output_table(case: str, ip: str, port: int, uid: int, iface: str,
                               want: tuple[bool, str, str, int | None]) -> None:
    v = evaluate_output(PLAN, ip, port, uid, iface)
    assert (v.captured, v.chain, v.rule, v.target_port) == want
    assert v.path[0].chain == "OUTPUT" and v.path[0].target == "MESHNS_OUTPUT"


def test_captured_path_names_the_deciding_output_rule() -> None:
    v = evaluate_output(PLAN, "10.189.0.7", 9080, 0, "eth0")
    assert [(s.chain, s.rule) for s in v.path] == [
        ("OUTPUT", "meshns: capture outbound TCP"),
        ("MESHNS_OUTPUT", "meshns: outbound TCP to the sidecar"),
        ("MESHNS_REDIRECT", "meshns: to outbound listener"),
    ]


def test_inbound_hop_source_is_the_loop_breaker() -> None:
    v = evaluate_output(PLAN, POD_IP, 8080, 1337, "lo", src_ip="127.0.0.6")
    assert (v.captured, v.rule) == (False, "meshns: loop breaker: inbound hop from 127.0.0.6")


def test_gid_alone_is_exempt() -> None:
    v = evaluate_output(PLAN, "10.188.0.9", 80, 0, "eth0", gid=1337)
    assert (v.captured, v.rule) == (False, "meshns: loop breaker: proxy gid 1337")


def test_default_plan_without_exclusions_captures_9999() -> None:
    v = evaluate_output(plan_rules(InterceptSpec()), "10.188.0.9", 9999, 0, "eth0")
    assert v.captured and v.target_port == 15001


def test_semantics_negation_wildcard_and_policy() -> None:
    rules = (
        Rule("OUTPUT", Target("X"), protocol=Operand("tcp")),
        Rule("X", Target("RETURN"), dst=Operand("10.0.0.0/8", negated=True)),
        Rule("X", Target("RETURN"), out_interface=Operand("veth+"), protocol=Operand("tcp"),
             matches=(TcpDport(22, negated=True),)),
        Rule("X", Target("RETURN"), matches=(Owner("uid", 5, negated=True),)),
        Rule("X", Target("REDIRECT", 1), protocol=Operand("tcp")),
    )
    plan = RulePlan("nat", ("X",), rules)
    assert not evaluate_output(plan, "192.168.1.1", 80, 5, "eth0").captured  # ! -d 10/8
    assert not evaluate_output(plan, "10.0.0.1", 80, 5, "veth0").captured  # veth+ and ! --dport 22
    assert evaluate_output(plan, "10.0.0.1", 22, 5, "veth0").target_port == 1
    v = evaluate_output(plan, "10.0.0.1", 80, 6, "eth0")  # ! --uid-owner 5 returns
    assert (v.captured, v.chain) == (False, "X")
    empty = RulePlan("nat", (), ())
    assert evaluate_output(empty, "10.0.0.1", 80, 0, "eth0").rule == "policy ACCEPT"


@pytest.mark.parametrize(("text", "want"), [
    ("reviews:9080", ("reviews", 9080)), ("10.0.0.1:80", ("10.0.0.1", 80)), ("a.b-c:1", ("a.b-c", 1)),
])
def test_parse_dst(text: str, want: tuple[str, int]) -> None:
    assert explain.parse_dst(text) == want


@pytest.mark.parametrize("text", ["reviews", ":80", "web:0", "web:65536", "web:http", "we b:80", "-x:1"])
def test_parse_dst_refuses(text: str) -> None:
    with pytest.raises(UserError):
        explain.parse_dst(text)


def test_resolve_and_interface() -> None:
    hosts = "# comment\n127.0.0.1 localhost\n10.188.0.3 web  # pod\n10.189.0.2 reviews\n"
    assert explain.resolve(hosts, "web") == "10.188.0.3"
    assert explain.resolve(hosts, "reviews") == "10.189.0.2"
    assert explain.resolve(hosts, "10.9.9.9") == "10.9.9.9"
    assert explain.resolve(hosts, "pod") is None
    assert explain.out_interface("127.0.0.5", POD_IP) == "lo"
    assert explain.out_interface(POD_IP, POD_IP) == "lo"
    assert explain.out_interface("10.188.0.9", POD_IP) == "eth0"


SNAP = Snapshot(1, "client", (Service("reviews", "10.189.0.2", (ServicePort(9080, 8080),),
                                      (Endpoint("r1", "10.188.0.3"), Endpoint("r2", "10.188.0.4"))),))


def test_describe_service_with_health_from_clusters() -> None:
    clusters = {"services": [{"name": "reviews", "endpoints": [
        {"ip": "10.188.0.3", "healthy": True, "active_requests": 2},
        {"address": "10.188.0.4:8080", "healthy": True, "ejected": True}]}]}
    d = explain.describe(SNAP, {}, "10.189.0.2", 9080, clusters)
    assert d["kind"] == "service"
    svc = d["service"]
    assert svc["target_port"] == 8080 and svc["lb"] == "least_request"
    assert svc["endpoints"][0]["health"] == {"healthy": True, "active_requests": 2}
    assert svc["endpoints"][1]["health"]["ejected"] is True
    assert svc["routes"][0]["name"] == "default"
    v = explain.verdict(evaluate_output(PLAN, "10.189.0.2", 9080, 0, "eth0"), d, "10.189.0.2:9080")
    assert "service reviews" in v and "2 endpoint(s), 1 usable" in v and "mTLS not enabled" in v


def test_describe_pod_other_and_wrong_port() -> None:
    assert explain.describe(SNAP, {"10.188.0.3": "r1"}, "10.188.0.3", 8080, None) == {"kind": "pod", "pod": "r1"}
    assert explain.describe(SNAP, {}, "10.9.9.9", 80, None) == {"kind": "other"}
    assert explain.describe(SNAP, {}, "10.189.0.2", 81, None)["kind"] == "service-port-missing"
    unhealthy_unknown = explain.describe(SNAP, {}, "10.189.0.2", 9080, None)
    assert unhealthy_unknown["service"]["endpoints"][0]["health"] == "unknown"


def test_verdict_not_captured_names_the_rule() -> None:
    rule = evaluate_output(PLAN, "10.188.0.9", 9999, 0, "eth0")
    assert explain.verdict(rule, {"kind": "pod", "pod": "x"}, "10.188.0.9:9999").startswith(
        "not captured (outbound port 9999 excluded)")


def test_health_from_the_sidecars_clusters_document() -> None:
    # The shape dataplane/admin_ops.clusters serves: {service: {vip, lb, endpoints: [...]}}.
    clusters = {"reviews": {"vip": "10.189.0.2", "lb": "least_request", "endpoints": [
        {"pod": "r1", "ip": "10.188.0.3", "labels": {}, "health": "ejected", "ejected": True, "active_requests": 0},
        {"pod": "r2", "ip": "10.188.0.4", "labels": {}, "health": "healthy", "ejected": False}]}}
    svc = explain.describe(SNAP, {}, "10.189.0.2", 9080, clusters)["service"]
    assert svc["endpoints"][0]["health"]["health"] == "ejected"
    v = explain.verdict(evaluate_output(PLAN, "10.189.0.2", 9080, 0, "eth0"), {"kind": "service", "service": svc},
                        "10.189.0.2:9080")
    assert "2 endpoint(s), 1 usable" in v
