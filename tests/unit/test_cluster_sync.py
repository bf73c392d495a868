"""The agent's pure parts: the three-way merge of documents, and reading the etcd view."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from meshns.cluster import keys, view
from meshns.cluster.sync import Value, plan_sync
from meshns.model import PodRecord, PodSpec, PodState, ServicePortDecl

A, A2, B = Value("a", 1.0), Value("a2", 2.0), Value("b", 3.0)

# (local, remote, base) -> (push_put, push_delete, pull_put, pull_delete, base)
CASES = [
    ("agreed", {"k": A}, {"k": A}, {"k": "a"}, {}, [], {}, [], {"k": "a"}),
    ("agreed, base was behind", {"k": A}, {"k": A}, {}, {}, [], {}, [], {"k": "a"}),
    ("new here", {"k": A}, {}, {}, {"k": A}, [], {}, [], {"k": "a"}),
    ("new there", {}, {"k": A}, {}, {}, [], {"k": A}, [], {"k": "a"}),
    ("changed here", {"k": A2}, {"k": A}, {"k": "a"}, {"k": A2}, [], {}, [], {"k": "a2"}),
    ("changed there", {"k": A}, {"k": A2}, {"k": "a"}, {}, [], {"k": A2}, [], {"k": "a2"}),
    ("deleted here", {}, {"k": A}, {"k": "a"}, {}, ["k"], {}, [], {}),
    ("deleted there", {"k": A}, {}, {"k": "a"}, {}, [], {}, ["k"], {}),
    ("deleted on both", {}, {}, {"k": "a"}, {}, [], {}, [], {}),
    ("both changed: later stamp wins (here)", {"k": B}, {"k": A2}, {"k": "a"}, {"k": B}, [], {}, [], {"k": "b"}),
    ("both changed: later stamp wins (there)", {"k": A2}, {"k": B}, {"k": "a"}, {}, [], {"k": B}, [], {"k": "b"}),
    ("both changed, same stamp: etcd wins", {"k": Value("x", 5)}, {"k": Value("y", 5)}, {"k": "a"},
     {}, [], {"k": Value("y", 5)}, [], {"k": "y"}),
    ("new on both sides, different", {"k": A}, {"k": B}, {}, {}, [], {"k": B}, [], {"k": "b"}),
    ("changed here, deleted there: kept", {"k": A2}, {}, {"k": "a"}, {"k": A2}, [], {}, [], {"k": "a2"}),
    ("deleted here, changed there: kept", {}, {"k": A2}, {"k": "a"}, {}, [], {"k": A2}, [], {"k": "a2"}),
]


@pytest.mark.parametrize(("why", "local", "remote", "base", "push", "push_del", "pull", "pull_del", "new_base"),
                         CASES, ids=[c[0] for c in CASES])
def test_three_way(why: str, local: dict[str, Value], remote: dict[str, Value], base: dict[str, str],
                   push: dict[str, Value], push_del: list[str], pull: dict[str, Value], pull_del: list[str],
                   new_base: dict[str, str]) -> None:
    plan = plan_sync(local, remote, base)
    assert (plan.push_put, plan.push_delete, plan.pull_put, plan.pull_delete, plan.base) == (
        push, push_del, pull, pull_del, new_base), why


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_applying_a_plan_converges(case: tuple[object, ...]) -> None:
    """After a plan is carried out, both sides equal its base and planning again does nothing:
    a round cut short and decided again neither loses nor repeats anything."""
    local, remote, base = dict(case[1]), dict(case[2]), dict(case[3])  # type: ignore[call-overload]
    plan = plan_sync(local, remote, base)
    for k, v in plan.push_put.items():
        remote[k] = v
    for k in plan.push_delete:
        remote.pop(k)
    for k, v in plan.pull_put.items():
        local[k] = v
    for k in plan.pull_delete:
        local.pop(k)
    assert {k: v.text for k, v in local.items()} == {k: v.text for k, v in remote.items()} == plan.base
    again = plan_sync(local, remote, plan.base)
    assert not again.pushes and not again.pulls


def _pod(name: str, ip: str, state: PodState = PodState.READY) -> PodRecord:
    spec = PodSpec(app=("secret-cmd", "--token=x"), labels=(("app", "echo"),),
                   services=(ServicePortDecl("echo", 80, 8080),), service_account="")
    return PodRecord(name, IPv4Address(ip), "ns-" + name, "v", state, spec, None, 0.0, 0.0)


def test_own_pods_are_ready_ones_without_their_command_line() -> None:
    out = view.own_pods([_pod("e1", "10.188.1.2"), _pod("e2", "10.188.1.3", PodState.CREATING)], "m", "h1")
    assert list(out) == ["/meshns/m/pods/h1/e1"]
    raw = json.loads(out["/meshns/m/pods/h1/e1"])
    assert raw["ip"] == "10.188.1.2" and raw["spec"]["app"] == []
    assert b"secret" not in out["/meshns/m/pods/h1/e1"]


def _view() -> dict[str, bytes]:
    v: dict[str, bytes] = {}
    v.update(view.own_pods([_pod("e1", "10.188.1.2")], "m", "h1"))
    v.update(view.own_pods([_pod("e1", "10.188.2.2")], "m", "h2"))
    v.update(view.own_pods([_pod("e9", "10.188.3.2")], "m", "gone"))  # pod key outliving its host
    v["/meshns/m/hosts/h1"] = json.dumps({"address": "10.9.0.11", "pod_cidr": "10.188.1.0/24"}).encode()
    v["/meshns/m/hosts/h2"] = json.dumps({"address": "10.9.0.12", "pod_cidr": "10.188.2.0/24"}).encode()
    v["/meshns/m/pods/h2/bad"] = b"{not json"
    v["/meshns/other/hosts/h3"] = json.dumps({"address": "10.9.0.13", "pod_cidr": "10.188.3.0/24"}).encode()
    return v


def test_remote_pods_are_other_live_hosts_pods() -> None:
    remote = view.remote_pods(_view(), "m", "h1")
    assert [(r.host, r.name, str(r.ip)) for r in remote] == [("h2", "e1", "10.188.2.2")]
    rec = remote[0].as_record()
    # Known as <pod>.<host>; its identity keeps the pod's own name as account.
    assert rec.name == "e1.h2" and rec.spec.service_account == "e1" and rec.state == PodState.READY


def test_routes_to_other_live_hosts_only() -> None:
    assert view.routes(_view(), "m", "h1") == {IPv4Network("10.188.2.0/24"): IPv4Address("10.9.0.12")}


def test_documents_and_revocations_from_the_view() -> None:
    v = {keys.config_key("m", "VirtualService", "default", "r"): view.config_value(Value("{}", 7.0)),
         keys.revoked_key("m", "spiffe://td/ns/default/sa/x"): b""}
    assert view.remote_configs(v, "m") == {("VirtualService", "default", "r"): Value("{}", 7.0)}
    assert view.remote_revoked(v, "m") == {"spiffe://td/ns/default/sa/x": Value("revoked")}


def test_host_guard_lets_the_cluster_cidr_through_before_dropping() -> None:
    from meshns.netns.hostguard import guard_rules

    plain = guard_rules("br0")
    joined = guard_rules("br0", IPv4Network("10.188.0.0/16"))
    assert [r[-1] for r in plain] == ["DROP", "DROP"]
    assert [r[-1] for r in joined] == ["ACCEPT", "ACCEPT", "DROP", "DROP"] and joined[2:] == plain
    assert joined[0][5:7] == ["-d", "10.188.0.0/16"] and joined[1][5:7] == ["-s", "10.188.0.0/16"]


def test_shared_memo_gives_each_snapshot_its_own_json() -> None:
    """publish converts the shared services once for all pods; per-pod objects made and freed in
    the loop must never be answered from the memo under a reused id."""
    from dataclasses import asdict

    from meshns.compiler import snapshot_for
    from meshns.snapshot import Endpoint, Security

    workloads = tuple(Endpoint(f"p{i}", f"10.0.0.{i}", ()) for i in range(5))
    memo: dict[int, object] = {}
    for i in range(200):
        snap = snapshot_for(f"p{i}", i, (), workloads, Security(identity=f"spiffe://td/ns/default/sa/p{i}"))
        assert json.loads(snap.to_json(memo)) == json.loads(json.dumps(asdict(snap))), i
        del snap
