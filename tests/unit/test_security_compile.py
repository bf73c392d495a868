"""meshns.istio.security_compile: applied security documents -> one pod's PeerAuthn and AuthorizationPolicies."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from meshns.istio.parse import ConfigDoc, parse_documents
from meshns.istio.security_compile import compile_security
from meshns.snapshot import AuthzPolicy, AuthzRule, AuthzSource, PeerAuthn

POD_NS = "foo"
POD_LABELS = {"app": "web", "version": "v1"}


def pa(name: str, ns: str, mode: str | None = None, *, labels: dict[str, str] | None = None,
       ports: dict[int, str | None] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if labels is not None:
        spec["selector"] = {"matchLabels": labels}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if ports is not None:
        spec["portLevelMtls"] = {p: ({"mode": m} if m else {}) for p, m in ports.items()}
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def ap(name: str, ns: str, *, labels: dict[str, str] | None = None, action: str = "ALLOW",
       rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": action}
    if labels is not None:
        spec["selector"] = {"matchLabels": labels}
    if rules is not None:
        spec["rules"] = rules
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def docs(*raw: dict[str, Any]) -> list[ConfigDoc]:
    return parse_documents(yaml.safe_dump_all(raw)).docs if raw else []


MESH = "istio-system"
WEB = {"app": "web"}

# (id, documents, expected PeerAuthn for a pod in foo labelled app=web,version=v1)
PEER_AUTHN: list[tuple[str, list[dict[str, Any]], PeerAuthn]] = [
    ("nothing applied: PERMISSIVE", [], PeerAuthn("PERMISSIVE")),
    ("mesh STRICT", [pa("default", MESH, "STRICT")], PeerAuthn("STRICT")),
    ("mesh UNSET keeps the default", [pa("default", MESH, "UNSET")], PeerAuthn("PERMISSIVE")),
    ("namespace overrides mesh", [pa("default", MESH, "STRICT"), pa("ns", POD_NS, "PERMISSIVE")],
     PeerAuthn("PERMISSIVE")),
    ("namespace UNSET inherits mesh", [pa("default", MESH, "STRICT"), pa("ns", POD_NS)], PeerAuthn("STRICT")),
    ("workload overrides namespace", [pa("ns", POD_NS, "DISABLE"), pa("w", POD_NS, "STRICT", labels=WEB)],
     PeerAuthn("STRICT")),
    ("workload UNSET inherits namespace", [pa("default", MESH, "STRICT"), pa("ns", POD_NS, "DISABLE"),
                                           pa("w", POD_NS, "UNSET", labels=WEB)], PeerAuthn("DISABLE")),
    ("workload UNSET inherits mesh through UNSET namespace",
     [pa("default", MESH, "STRICT"), pa("ns", POD_NS), pa("w", POD_NS, labels=WEB)], PeerAuthn("STRICT")),
    ("workload needs all its labels", [pa("w", POD_NS, "STRICT", labels={"app": "web", "version": "v2"})],
     PeerAuthn("PERMISSIVE")),
    ("workload selector for other pods", [pa("w", POD_NS, "STRICT", labels={"app": "db"})], PeerAuthn("PERMISSIVE")),
    ("workload policy of another namespace", [pa("w", "bar", "STRICT", labels=WEB)], PeerAuthn("PERMISSIVE")),
    ("namespace policy of another namespace", [pa("ns", "bar", "STRICT")], PeerAuthn("PERMISSIVE")),
    ("selector in the root namespace applies to no pod", [pa("w", MESH, "STRICT", labels=WEB)],
     PeerAuthn("PERMISSIVE")),
    ("port levels from the workload policy",
     [pa("w", POD_NS, "STRICT", labels=WEB, ports={8080: "DISABLE", 9090: "PERMISSIVE"})],
     PeerAuthn("STRICT", ((8080, "DISABLE"), (9090, "PERMISSIVE")))),
    ("UNSET port inherits the workload's effective mode",
     [pa("ns", POD_NS, "DISABLE"), pa("w", POD_NS, labels=WEB, ports={80: "STRICT", 9090: None, 9091: "UNSET"})],
     PeerAuthn("DISABLE", ((80, "STRICT"), (9090, "DISABLE"), (9091, "DISABLE")))),
    ("UNSET port inherits the mesh mode", [pa("default", MESH, "STRICT"), pa("w", POD_NS, labels=WEB, ports={80: None})],
     PeerAuthn("STRICT", ((80, "STRICT"),))),
    ("ports of an unselected workload policy do not apply",
     [pa("w", POD_NS, "STRICT", labels={"app": "db"}, ports={80: "DISABLE"})], PeerAuthn("PERMISSIVE")),
    ("tie at namespace level: first by name", [pa("b", POD_NS, "STRICT"), pa("a", POD_NS, "DISABLE")],
     PeerAuthn("DISABLE")),
    ("tie at mesh level: first by name", [pa("z", MESH, "DISABLE"), pa("m", MESH, "STRICT")], PeerAuthn("STRICT")),
    ("tie at workload level: first by name, ports too",
     [pa("w2", POD_NS, "DISABLE", labels=WEB), pa("w1", POD_NS, "STRICT", labels={"version": "v1"}, ports={80: None})],
     PeerAuthn("STRICT", ((80, "STRICT"),))),
    ("tie winner UNSET still inherits", [pa("a", POD_NS), pa("b", POD_NS, "DISABLE"), pa("default", MESH, "STRICT")],
     PeerAuthn("STRICT")),
]


@pytest.mark.parametrize(("documents", "expected"), [c[1:] for c in PEER_AUTHN], ids=[c[0] for c in PEER_AUTHN])
def test_peer_authentication_precedence(documents: list[dict[str, Any]], expected: PeerAuthn) -> None:
    authn, policies = compile_security(POD_NS, POD_LABELS, docs(*documents))
    assert authn == expected
    assert policies == ()


def test_pod_in_the_root_namespace() -> None:
    applied = docs(pa("default", MESH, "STRICT"), pa("w", MESH, "DISABLE", labels=WEB))
    assert compile_security(MESH, POD_LABELS, applied)[0] == PeerAuthn("STRICT")


def test_root_namespace_is_a_parameter() -> None:
    applied = docs(pa("default", "mesh-root", "STRICT"), pa("default", MESH, "DISABLE"))
    assert compile_security(POD_NS, POD_LABELS, applied, root_namespace="mesh-root")[0] == PeerAuthn("STRICT")
    assert compile_security(POD_NS, POD_LABELS, applied)[0] == PeerAuthn("DISABLE")


def test_other_kinds_are_ignored() -> None:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r"},
          "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]}]}}
    assert compile_security(POD_NS, POD_LABELS, docs(vs)) == (PeerAuthn(), ())


# -- AuthorizationPolicy selection ---------------------------------------------------------------

ANY = [{}]

# (id, documents, names of the policies that reach a pod in foo labelled app=web,version=v1)
SELECTION: list[tuple[str, list[dict[str, Any]], list[str]]] = [
    ("none", [], []),
    ("root namespace, no selector: every pod", [ap("mesh", MESH, rules=ANY)], ["istio-system/mesh"]),
    ("root namespace, matching selector, any namespace", [ap("mesh", MESH, labels=WEB, rules=ANY)],
     ["istio-system/mesh"]),
    ("root namespace, other selector", [ap("mesh", MESH, labels={"app": "db"}, rules=ANY)], []),
    ("pod namespace, no selector", [ap("ns", POD_NS, rules=ANY)], ["foo/ns"]),
    ("pod namespace, matching selector", [ap("w", POD_NS, labels={"version": "v1"}, rules=ANY)], ["foo/w"]),
    ("pod namespace, selector needs every label", [ap("w", POD_NS, labels={"app": "web", "tier": "x"}, rules=ANY)],
     []),
    ("other namespace, matching selector", [ap("w", "bar", labels=WEB, rules=ANY)], []),
    ("other namespace, no selector", [ap("ns", "bar", rules=ANY)], []),
    ("all levels, in name order",
     [ap("z", POD_NS, rules=ANY), ap("a", POD_NS, labels=WEB, action="DENY", rules=ANY), ap("m", MESH, rules=ANY),
      ap("x", "bar", rules=ANY)], ["foo/a", "foo/z", "istio-system/m"]),
]


@pytest.mark.parametrize(("documents", "names"), [c[1:] for c in SELECTION], ids=[c[0] for c in SELECTION])
def test_authorization_policy_selection(documents: list[dict[str, Any]], names: list[str]) -> None:
    authn, policies = compile_security(POD_NS, POD_LABELS, docs(*documents))
    assert [p.name for p in policies] == names
    assert authn == PeerAuthn()


def test_policies_carry_action_and_rules() -> None:
    rule = {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}
    _, policies = compile_security(POD_NS, POD_LABELS, docs(
        ap("allow-nothing", POD_NS), ap("deny", POD_NS, action="DENY", rules=[rule])))
    assert policies == (
        AuthzPolicy("foo/allow-nothing", "ALLOW", ()),  # kept: it makes every request need another ALLOW
        AuthzPolicy("foo/deny", "DENY", (AuthzRule(sources=(AuthzSource(principals=("cluster.local/ns/default/sa/sleep",)),)),)),
    )


@pytest.mark.parametrize(("trust_domain", "written", "compiled"), [
    ("cluster.local", "cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/b"),
    ("example.org", "cluster.local/ns/a/sa/b", "example.org/ns/a/sa/b"),
    ("example.org", "cluster.local/ns/a/sa/*", "example.org/ns/a/sa/*"),
    ("example.org", "other.td/ns/a/sa/b", "other.td/ns/a/sa/b"),
    ("example.org", "*/ns/a/sa/b", "*/ns/a/sa/b"),
    ("example.org", "cluster.local/ns/*", "cluster.local/ns/*"),  # not a full principal: no trust domain in it
    ("example.org", "*", "*"),
])
def test_cluster_local_means_this_trust_domain(trust_domain: str, written: str, compiled: str) -> None:
    rule = {"from": [{"source": {"principals": [written], "notPrincipals": [written], "namespaces": ["a"]}}]}
    _, (policy,) = compile_security(POD_NS, POD_LABELS, docs(ap("p", POD_NS, rules=[rule])), trust_domain=trust_domain)
    (source,) = policy.rules[0].sources
    assert source == AuthzSource(principals=(compiled,), not_principals=(compiled,), namespaces=("a",))
