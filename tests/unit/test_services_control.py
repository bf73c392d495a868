from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from meshns.compiler import compile_services, stored_docs
from meshns.config import ConfigRequest, resolve
from meshns.errors import ConflictError, UserError
from meshns.istio.parse import parse_documents
from meshns.model import PodRecord, PodSpec, PodState, ServicePortDecl, ServiceRecord
from meshns.names import parse_label, parse_service_decl
from meshns.netns import ipam
from meshns.registry import ConfigRow
from meshns.snapshot import Snapshot
from meshns.sqlite_registry import SqliteRegistry


@pytest.mark.parametrize("text,want", [
    ("reviews:9080", ServicePortDecl("reviews", 9080, 9080)),
    ("reviews:80:8080", ServicePortDecl("reviews", 80, 8080)),
])
def test_service_decl(text: str, want: ServicePortDecl) -> None:
    assert parse_service_decl(text) == want


@pytest.mark.parametrize("text", ["reviews", "reviews:", "Reviews:80", "r:0", "r:70000", "r:80:x", "r:1:2:3", ":80"])
def test_bad_service_decl(text: str) -> None:
    with pytest.raises(UserError):
        parse_service_decl(text)


@pytest.mark.parametrize("text,ok", [("version=v1", True), ("app.kubernetes.io/name=web", True), ("k=", True),
                                     ("=v", False), ("k", False), ("k=v v", False), ("k=$(id)", False)])
def test_labels(text: str, ok: bool) -> None:
    if ok:
        assert parse_label(text)[0] == text.split("=", maxsplit=1)[0]
    else:
        with pytest.raises(UserError):
            parse_label(text)


def test_service_cidr_must_not_overlap_pods() -> None:
    with pytest.raises(UserError, match="overlaps"):
        resolve(ConfigRequest(state_dir="/x", pod_cidr="10.1.0.0/16", service_cidr="10.1.2.0/24"), {})


def test_registry_services_configs_generation(tmp_path: Path) -> None:
    reg = SqliteRegistry(tmp_path / "r.db")
    net = IPv4Network("10.99.0.0/24")

    def alloc(used: set[IPv4Address]) -> IPv4Address:
        return ipam.allocate(net, used)

    g0 = reg.generation()
    s = reg.ensure_service("reviews", ((9080, 9080),), alloc)
    assert str(s.vip) == "10.99.0.2" and reg.generation() == g0 + 1
    assert reg.ensure_service("reviews", ((9080, 9080),), alloc).vip == s.vip  # stable VIP
    assert reg.generation() == g0 + 1  # nothing changed, nothing moved
    assert reg.ensure_service("reviews", ((9090, 9090),), alloc).ports == ((9080, 9080), (9090, 9090))
    with pytest.raises(ConflictError):
        reg.ensure_service("reviews", ((9080, 8080),), alloc)
    assert str(reg.ensure_service("ratings", ((80, 80),), alloc).vip) == "10.99.0.3"
    reg.put_configs([ConfigRow("VirtualService", "default", "reviews", '{"a": 1}')])
    reg.put_configs([ConfigRow("VirtualService", "default", "reviews", '{"a": 2}')])
    rows = reg.list_configs()
    assert len(rows) == 1 and rows[0].doc == '{"a": 2}'
    assert reg.delete_configs([("VirtualService", "default", "reviews"), ("DestinationRule", "default", "x")]) == 1
    assert reg.remove_service("ratings") and not reg.remove_service("ratings")
    assert [x.name for x in reg.list_services()] == ["reviews"]


def _pod(name: str, ip: str, services: tuple[str, ...], labels: tuple[tuple[str, str], ...] = (),
         state: PodState = PodState.READY) -> PodRecord:
    spec = PodSpec(services=tuple(ServicePortDecl(s, 9080, 9080) for s in services), labels=labels)
    return PodRecord(name, IPv4Address(ip), f"ns-{name}", f"mv{name}", state, spec, None, 0.0, 0.0)


VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match:
    - uri: {prefix: /v2}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def test_compile_endpoints_are_ready_members_only_and_policies_apply() -> None:
    services = [ServiceRecord("reviews", IPv4Address("10.99.0.2"), ((9080, 9080),), 0.0),
                ServiceRecord("ratings", IPv4Address("10.99.0.3"), ((80, 8080),), 0.0)]
    pods = [
        _pod("r1", "10.0.0.2", ("reviews",), (("version", "v1"),)),
        _pod("r2", "10.0.0.3", ("reviews",), (("version", "v2"),)),
        _pod("r3", "10.0.0.4", ("reviews",), state=PodState.CREATING),  # not validated yet
        _pod("r4", "10.0.0.5", ("reviews",), state=PodState.DELETING),  # on its way out
        _pod("c", "10.0.0.6", ()),
    ]
    docs = parse_documents(VS).docs
    compiled, warnings = compile_services(services, pods, docs)
    reviews, ratings = compiled
    assert [e.pod for e in reviews.endpoints] == ["r1", "r2"]
    assert reviews.lb == "round_robin" and [s.name for s in reviews.subsets] == ["v1", "v2"]
    assert [r.destinations[0].subset for r in reviews.routes] == ["v2", "v1"]
    assert [e.pod for e in reviews.subset_endpoints("v2")] == ["r2"]
    assert ratings.endpoints == () and ratings.target_port(80) == 8080 and ratings.lb == "least_request"
    snap = Snapshot(7, "c", compiled)
    assert Snapshot.from_json(snap.to_json()) == snap
    assert snap.by_dst()[("10.99.0.2", 9080)].name == "reviews"
    assert warnings == []


def test_stored_documents_parse_back() -> None:
    docs = parse_documents(VS).docs
    import json

    rows = [ConfigRow(d.kind, d.namespace, d.name, json.dumps(d.raw)) for d in docs]
    assert [(d.kind, d.name) for d in stored_docs(rows)] == [(d.kind, d.name) for d in docs]
