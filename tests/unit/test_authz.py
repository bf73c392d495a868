"""meshns.mtls.authz: Istio AuthorizationPolicy decisions for HTTP requests and TCP connections."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from meshns.istio.parse import parse_documents
from meshns.istio.security_compile import compile_security
from meshns.mtls.authz import Authorizer, Verdict, authorizer, evaluate_http, evaluate_tcp
from meshns.snapshot import AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
OPS = "spiffe://cluster.local/ns/admin/sa/ops"
WEB = "spiffe://cluster.local/ns/foo-prod/sa/web"
ANON = ""  # plaintext or unauthenticated peer


def allow(*rules: AuthzRule, name: str = "foo/allow") -> AuthzPolicy:
    return AuthzPolicy(name, "ALLOW", rules)


def deny(*rules: AuthzRule, name: str = "foo/deny") -> AuthzPolicy:
    return AuthzPolicy(name, "DENY", rules)


def rule(*clauses: AuthzSource | AuthzOperation) -> AuthzRule:
    return AuthzRule(sources=tuple(c for c in clauses if isinstance(c, AuthzSource)),
                     operations=tuple(c for c in clauses if isinstance(c, AuthzOperation)))


def _snake(fields: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """Istio's field names (notPrincipals) to the snapshot's (not_principals)."""
    return {re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), k): tuple(v) for k, v in fields.items()}


def src(**fields: Any) -> AuthzSource:
    return AuthzSource(**_snake(fields))


def op(**fields: Any) -> AuthzOperation:
    return AuthzOperation(**_snake(fields))


EVERYTHING = rule()
ALLOW_PRINCIPAL = allow(rule(src(principals=["cluster.local/ns/default/sa/sleep"])))

# (id, policies, principal, port, method, path, allowed, deciding policy or None)
HTTP: list[tuple[str, tuple[AuthzPolicy, ...], str, int, str, str, bool, str | None]] = [
    # defaults
    ("no policy allows", (), SLEEP, 80, "GET", "/", True, None),
    ("no policy allows unauthenticated", (), ANON, 80, "GET", "/", True, None),
    ("empty ALLOW denies all", (allow(),), SLEEP, 80, "GET", "/", False, None),
    ("empty ALLOW denies unauthenticated", (allow(),), ANON, 80, "GET", "/", False, None),
    ("rule {} allows all", (allow(EVERYTHING),), SLEEP, 80, "GET", "/", True, "foo/allow"),
    ("rule {} allows unauthenticated", (allow(EVERYTHING),), ANON, 1, "X", "*", True, "foo/allow"),
    ("empty DENY denies nothing", (deny(),), SLEEP, 80, "GET", "/", True, None),
    ("DENY only, not matching: allowed", (deny(rule(op(methods=["DELETE"]))),), SLEEP, 80, "GET", "/", True, None),
    # principals
    ("principal exact", (ALLOW_PRINCIPAL,), SLEEP, 80, "GET", "/", True, "foo/allow"),
    ("principal exact, other peer", (ALLOW_PRINCIPAL,), OPS, 80, "GET", "/", False, None),
    ("principal exact, unauthenticated", (ALLOW_PRINCIPAL,), ANON, 80, "GET", "/", False, None),
    ("principal prefix", (allow(rule(src(principals=["cluster.local/ns/default/*"]))),), SLEEP, 80, "GET", "/", True,
     "foo/allow"),
    ("principal prefix, other", (allow(rule(src(principals=["cluster.local/ns/default/*"]))),), OPS, 80, "GET", "/",
     False, None),
    ("principal suffix", (allow(rule(src(principals=["*/sa/sleep"]))),), SLEEP, 80, "GET", "/", True, "foo/allow"),
    ("principal suffix, other", (allow(rule(src(principals=["*/sa/sleep"]))),), OPS, 80, "GET", "/", False, None),
    ("principal * is any authenticated", (allow(rule(src(principals=["*"]))),), OPS, 80, "GET", "/", True, "foo/allow"),
    ("principal * refuses unauthenticated", (allow(rule(src(principals=["*"]))),), ANON, 80, "GET", "/", False, None),
    ("principal suffix refuses unauthenticated", (allow(rule(src(principals=["*"]))),), ANON, 80, "GET", "/", False,
     None),
    ("principals OR", (allow(rule(src(principals=["x/ns/y/sa/z", "*/sa/ops"]))),), OPS, 80, "GET", "/", True,
     "foo/allow"),
    ("principal is not a substring match", (allow(rule(src(principals=["cluster.local/ns/default/sa/slee"]))),), SLEEP,
     80, "GET", "/", False, None),
    ("principal a*b is literal", (allow(rule(src(principals=["cluster.local/*/sleep"]))),), SLEEP, 80, "GET", "/",
     False, None),
    ("notPrincipals excludes", (allow(rule(src(notPrincipals=["*/sa/sleep"]))),), SLEEP, 80, "GET", "/", False, None),
    ("notPrincipals passes others", (allow(rule(src(notPrincipals=["*/sa/sleep"]))),), OPS, 80, "GET", "/", True,
     "foo/allow"),
    ("notPrincipals * passes unauthenticated", (allow(rule(src(notPrincipals=["*"]))),), ANON, 80, "GET", "/", True,
     "foo/allow"),
    ("notPrincipals * excludes authenticated", (allow(rule(src(notPrincipals=["*"]))),), SLEEP, 80, "GET", "/", False,
     None),
    # namespaces
    ("namespace exact", (allow(rule(src(namespaces=["default"]))),), SLEEP, 80, "GET", "/", True, "foo/allow"),
    ("namespace exact, other", (allow(rule(src(namespaces=["default"]))),), OPS, 80, "GET", "/", False, None),
    ("namespace prefix", (allow(rule(src(namespaces=["foo-*"]))),), WEB, 80, "GET", "/", True, "foo/allow"),
    ("namespace suffix", (allow(rule(src(namespaces=["*-prod"]))),), WEB, 80, "GET", "/", True, "foo/allow"),
    ("namespace suffix, other", (allow(rule(src(namespaces=["*-prod"]))),), SLEEP, 80, "GET", "/", False, None),
    ("namespace * any authenticated", (allow(rule(src(namespaces=["*"]))),), SLEEP, 80, "GET", "/", True, "foo/allow"),
    ("namespace * refuses unauthenticated", (allow(rule(src(namespaces=["*"]))),), ANON, 80, "GET", "/", False, None),
    ("namespace is not the service account", (allow(rule(src(namespaces=["sleep"]))),), SLEEP, 80, "GET", "/", False,
     None),
    ("notNamespaces excludes", (allow(rule(src(notNamespaces=["admin"]))),), OPS, 80, "GET", "/", False, None),
    ("notNamespaces passes others", (allow(rule(src(notNamespaces=["admin"]))),), SLEEP, 80, "GET", "/", True,
     "foo/allow"),
    ("notNamespaces passes unauthenticated", (allow(rule(src(notNamespaces=["admin"]))),), ANON, 80, "GET", "/", True,
     "foo/allow"),
    # a source is an AND of its fields; sources are an OR
    ("source AND: both match", (allow(rule(src(principals=["*"], namespaces=["default"]))),), SLEEP, 80, "GET", "/",
     True, "foo/allow"),
    ("source AND: one fails", (allow(rule(src(principals=["*"], namespaces=["default"]))),), OPS, 80, "GET", "/", False,
     None),
    ("source AND with not", (allow(rule(src(namespaces=["*"], notPrincipals=["*/sa/ops"]))),), OPS, 80, "GET", "/",
     False, None),
    ("sources OR", (allow(rule(src(namespaces=["default"]), src(namespaces=["admin"]))),), OPS, 80, "GET", "/", True,
     "foo/allow"),
    # ports
    ("port matches", (allow(rule(op(ports=[8080]))),), SLEEP, 8080, "GET", "/", True, "foo/allow"),
    ("port differs", (allow(rule(op(ports=[8080]))),), SLEEP, 9090, "GET", "/", False, None),
    ("notPorts excludes", (allow(rule(op(notPorts=[9090]))),), SLEEP, 9090, "GET", "/", False, None),
    ("notPorts passes others", (allow(rule(op(notPorts=[9090]))),), SLEEP, 8080, "GET", "/", True, "foo/allow"),
    # methods
    ("method exact", (allow(rule(op(methods=["GET", "HEAD"]))),), SLEEP, 80, "HEAD", "/", True, "foo/allow"),
    ("method is case-sensitive", (allow(rule(op(methods=["GET"]))),), SLEEP, 80, "get", "/", False, None),
    ("method other", (allow(rule(op(methods=["GET"]))),), SLEEP, 80, "POST", "/", False, None),
    ("notMethods excludes", (allow(rule(op(notMethods=["DELETE"]))),), SLEEP, 80, "DELETE", "/", False, None),
    ("notMethods passes others", (allow(rule(op(notMethods=["DELETE"]))),), SLEEP, 80, "PUT", "/", True, "foo/allow"),
    # paths
    ("path exact", (allow(rule(op(paths=["/info"]))),), SLEEP, 80, "GET", "/info", True, "foo/allow"),
    ("path exact ignores the query", (allow(rule(op(paths=["/info"]))),), SLEEP, 80, "GET", "/info?a=1&b=/x", True,
     "foo/allow"),
    ("path exact ignores a fragment", (allow(rule(op(paths=["/info"]))),), SLEEP, 80, "GET", "/info#top", True,
     "foo/allow"),
    ("path exact is not a prefix", (allow(rule(op(paths=["/info"]))),), SLEEP, 80, "GET", "/info/x", False, None),
    ("path exact, trailing slash differs", (allow(rule(op(paths=["/info"]))),), SLEEP, 80, "GET", "/info/", False,
     None),
    ("path is case-sensitive", (allow(rule(op(paths=["/info"]))),), SLEEP, 80, "GET", "/INFO", False, None),
    ("path prefix", (allow(rule(op(paths=["/api/*"]))),), SLEEP, 80, "GET", "/api/v1/users?id=1", True, "foo/allow"),
    ("path prefix, other", (allow(rule(op(paths=["/api/*"]))),), SLEEP, 80, "GET", "/apix", False, None),
    ("query does not make a prefix match", (allow(rule(op(paths=["/api/*"]))),), SLEEP, 80, "GET", "/x?/api/", False,
     None),
    ("path suffix", (allow(rule(op(paths=["*.js"]))),), SLEEP, 80, "GET", "/static/app.js?v=3", True, "foo/allow"),
    ("path suffix sees no query", (allow(rule(op(paths=["*.js"]))),), SLEEP, 80, "GET", "/x?f=a.js", False, None),
    ("path *", (allow(rule(op(paths=["*"]))),), SLEEP, 80, "GET", "/", True, "foo/allow"),
    ("absolute-form target matches on its path", (allow(rule(op(paths=["/info"]))),), SLEEP, 80, "GET",
     "http://web.foo:80/info?x=1", True, "foo/allow"),
    ("absolute-form without a path is /", (allow(rule(op(paths=["/"]))),), SLEEP, 80, "GET", "http://web?x", True,
     "foo/allow"),
    ("notPaths excludes", (allow(rule(op(notPaths=["/admin*"]))),), SLEEP, 80, "GET", "/admin/users", False, None),
    ("notPaths passes others", (allow(rule(op(notPaths=["/admin*"]))),), SLEEP, 80, "GET", "/info", True, "foo/allow"),
    # an operation is an AND of its fields; operations are an OR; a rule ANDs from and to
    ("operation AND: all match", (allow(rule(op(ports=[80], methods=["GET"], paths=["/a"]))),), SLEEP, 80, "GET", "/a",
     True, "foo/allow"),
    ("operation AND: one fails", (allow(rule(op(ports=[80], methods=["GET"], paths=["/a"]))),), SLEEP, 80, "POST",
     "/a", False, None),
    ("operations OR", (allow(rule(op(methods=["GET"]), op(paths=["/upload"]))),), SLEEP, 80, "POST", "/upload", True,
     "foo/allow"),
    ("from AND to: source fails", (allow(rule(src(namespaces=["default"]), op(methods=["GET"]))),), OPS, 80, "GET",
     "/", False, None),
    ("from AND to: operation fails", (allow(rule(src(namespaces=["default"]), op(methods=["GET"]))),), SLEEP, 80,
     "POST", "/", False, None),
    ("from AND to: both", (allow(rule(src(namespaces=["default"]), op(methods=["GET"]))),), SLEEP, 80, "GET", "/",
     True, "foo/allow"),
    ("rules OR", (allow(rule(op(methods=["GET"])), rule(op(methods=["POST"]))),), SLEEP, 80, "POST", "/", True,
     "foo/allow"),
    # DENY wins
    ("DENY beats ALLOW", (allow(EVERYTHING), deny(rule(op(methods=["DELETE"])))), SLEEP, 80, "DELETE", "/", False,
     "foo/deny"),
    ("DENY not matching: ALLOW decides", (allow(EVERYTHING), deny(rule(op(methods=["DELETE"])))), SLEEP, 80, "GET",
     "/", True, "foo/allow"),
    ("DENY beats ALLOW of the same peer", (ALLOW_PRINCIPAL, deny(rule(src(principals=["*/sa/sleep"])))), SLEEP, 80,
     "GET", "/", False, "foo/deny"),
    ("DENY of unauthenticated", (deny(rule(src(notPrincipals=["*"]))),), ANON, 80, "GET", "/", False, "foo/deny"),
    ("DENY of unauthenticated lets peers in", (deny(rule(src(notPrincipals=["*"]))),), SLEEP, 80, "GET", "/", True,
     None),
    ("DENY path prefix ignores the query", (deny(rule(op(paths=["/admin*"]))),), SLEEP, 80, "GET", "/admin?x", False,
     "foo/deny"),
    ("second ALLOW policy decides", (allow(rule(op(methods=["GET"])), name="foo/a"),
                                     allow(rule(op(methods=["POST"])), name="foo/b")), SLEEP, 80, "POST", "/", True,
     "foo/b"),
    ("empty ALLOW beside a matching one", (allow(name="foo/nothing"), ALLOW_PRINCIPAL), SLEEP, 80, "GET", "/", True,
     "foo/allow"),
    ("empty ALLOW beside a non-matching one", (allow(name="foo/nothing"), ALLOW_PRINCIPAL), OPS, 80, "GET", "/", False,
     None),
]


@pytest.mark.parametrize(("policies", "principal", "port", "method", "path", "allowed", "policy"),
                         [c[1:] for c in HTTP], ids=[c[0] for c in HTTP])
def test_http(policies: tuple[AuthzPolicy, ...], principal: str, port: int, method: str, path: str, allowed: bool,
              policy: str | None) -> None:
    verdict = evaluate_http(policies, principal, port, method, path)
    assert (verdict.allowed, verdict.policy) == (allowed, policy), verdict.reason


# (id, policies, principal, port, allowed, deciding policy or None)
TCP: list[tuple[str, tuple[AuthzPolicy, ...], str, int, bool, str | None]] = [
    ("no policy allows", (), ANON, 9000, True, None),
    ("empty ALLOW denies", (allow(),), SLEEP, 9000, False, None),
    ("rule {} allows", (allow(EVERYTHING),), ANON, 9000, True, "foo/allow"),
    ("ALLOW by port", (allow(rule(op(ports=[9000]))),), SLEEP, 9000, True, "foo/allow"),
    ("ALLOW by port, other port", (allow(rule(op(ports=[9000]))),), SLEEP, 9001, False, None),
    ("ALLOW by notPorts", (allow(rule(op(notPorts=[9001]))),), SLEEP, 9000, True, "foo/allow"),
    ("ALLOW by principal", (ALLOW_PRINCIPAL,), SLEEP, 9000, True, "foo/allow"),
    ("ALLOW by principal, unauthenticated", (ALLOW_PRINCIPAL,), ANON, 9000, False, None),
    ("ALLOW by namespace", (allow(rule(src(namespaces=["admin"]))),), OPS, 9000, True, "foo/allow"),
    # ALLOW with HTTP-only fields: the rule can't match TCP (ALLOW gets stricter)
    ("ALLOW with methods never matches TCP", (allow(rule(op(ports=[9000], methods=["GET"]))),), SLEEP, 9000, False,
     None),
    ("ALLOW with notMethods never matches TCP", (allow(rule(op(notMethods=["DELETE"]))),), SLEEP, 9000, False, None),
    ("ALLOW with paths never matches TCP", (allow(rule(op(paths=["*"]))),), SLEEP, 9000, False, None),
    ("ALLOW with notPaths never matches TCP", (allow(rule(op(notPaths=["/admin"]))),), SLEEP, 9000, False, None),
    ("ALLOW rule with any HTTP-only operation is skipped whole",
     (allow(rule(op(ports=[9000]), op(methods=["GET"]))),), SLEEP, 9000, False, None),
    ("another ALLOW rule still matches TCP", (allow(rule(op(methods=["GET"])), rule(op(ports=[9000]))),), SLEEP, 9000,
     True, "foo/allow"),
    # DENY with HTTP-only fields: the fields are dropped (DENY gets wider)
    ("DENY methods+port denies the port", (deny(rule(op(ports=[9000], methods=["GET"]))),), SLEEP, 9000, False,
     "foo/deny"),
    ("DENY methods+port, other port", (deny(rule(op(ports=[9000], methods=["GET"]))),), SLEEP, 9001, True, None),
    ("DENY with only paths denies all TCP", (deny(rule(op(paths=["/admin"]))),), SLEEP, 9001, False, "foo/deny"),
    ("DENY with only notMethods denies all TCP", (deny(rule(op(notMethods=["GET"]))),), SLEEP, 9001, False,
     "foo/deny"),
    ("DENY HTTP fields keep the source", (deny(rule(src(namespaces=["admin"]), op(methods=["GET"]))),), SLEEP, 9001,
     True, None),
    ("DENY HTTP fields keep the source, match", (deny(rule(src(namespaces=["admin"]), op(methods=["GET"]))),), OPS,
     9001, False, "foo/deny"),
    ("DENY beats ALLOW on TCP", (allow(EVERYTHING), deny(rule(op(ports=[22])))), SLEEP, 22, False, "foo/deny"),
    ("DENY unauthenticated on TCP", (allow(EVERYTHING), deny(rule(src(notPrincipals=["*"])))), ANON, 22, False,
     "foo/deny"),
]


@pytest.mark.parametrize(("policies", "principal", "port", "allowed", "policy"), [c[1:] for c in TCP],
                         ids=[c[0] for c in TCP])
def test_tcp(policies: tuple[AuthzPolicy, ...], principal: str, port: int, allowed: bool, policy: str | None) -> None:
    verdict = evaluate_tcp(policies, principal, port)
    assert (verdict.allowed, verdict.policy) == (allowed, policy), verdict.reason


def test_reasons() -> None:
    policies = (allow(rule(op(methods=["GET"])), rule(op(methods=["PUT"]))), deny(rule(op(methods=["DELETE"]))))
    assert evaluate_http(policies, SLEEP, 80, "PUT", "/") == Verdict(True, "foo/allow",
                                                                    "allowed by ALLOW policy foo/allow rules[1]")
    assert evaluate_http(policies, SLEEP, 80, "DELETE", "/") == Verdict(False, "foo/deny",
                                                                       "denied by DENY policy foo/deny rules[0]")
    assert evaluate_http(policies, SLEEP, 80, "POST", "/") == Verdict(False, None, "no ALLOW policy matched")
    assert evaluate_http((), SLEEP, 80, "POST", "/") == Verdict(True, None, "no authorization policy applies")
    assert evaluate_tcp((deny(),), SLEEP, 80) == Verdict(True, None, "no DENY policy matched and no ALLOW policy applies")


def test_compiled_once_per_policy_tuple() -> None:
    policies = (ALLOW_PRINCIPAL,)
    first = authorizer(policies)
    assert authorizer(policies) is first
    assert authorizer((ALLOW_PRINCIPAL,)) is not first  # an equal but new tuple: a new snapshot, compiled again
    as_list = [ALLOW_PRINCIPAL]
    assert evaluate_http(as_list, SLEEP, 80, "GET", "/").allowed  # lists work, but are not cached (they can change)
    as_list[0] = allow()
    assert not evaluate_http(as_list, SLEEP, 80, "GET", "/").allowed


def test_authorizer_directly() -> None:
    az = Authorizer((allow(rule(op(ports=[9000]))),))
    assert az.tcp(SLEEP, 9000).allowed and not az.tcp(SLEEP, 9001).allowed
    assert az.http(SLEEP, 9000, "GET", "/").allowed


def test_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="policy foo/x: unknown action 'AUDIT'"):
        Authorizer((AuthzPolicy("foo/x", "AUDIT", ()),))  # type: ignore[arg-type]


@pytest.mark.parametrize(("principal", "allowed"), [
    ("spiffe://cluster.local/ns/default/sa/sleep", True),
    ("cluster.local/ns/default/sa/sleep", True),  # already in Istio's form
    ("spiffe://cluster.local/ns/default", False),  # no service account: not Istio's form
    ("not-a-spiffe-id", False),
])
def test_principal_forms(principal: str, allowed: bool) -> None:
    policies = (allow(rule(src(namespaces=["default"], principals=["*/sa/sleep"]))),)
    assert evaluate_http(policies, principal, 80, "GET", "/").allowed is allowed


def test_hand_built_policy_with_spiffe_prefix_still_matches() -> None:
    policies = (deny(rule(src(principals=[SLEEP]))),)
    assert not evaluate_tcp(policies, SLEEP, 80).allowed


def test_empty_pattern_matches_nothing() -> None:
    # Parse refuses "", but a hand-built policy must not let it match the unauthenticated peer.
    assert not evaluate_tcp((allow(rule(src(principals=[""]))),), ANON, 80).allowed
    assert evaluate_tcp((allow(rule(src(notPrincipals=[""]))),), ANON, 80).allowed


# -- end to end: Istio YAML -> compile for a pod -> decisions ------------------------------------

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-plaintext, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: ["*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-read, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
    to:
    - operation: {methods: ["GET"], paths: ["/status/*", "/headers"], ports: ["8000"]}
  - from:
    - source: {namespaces: ["admin"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: foo}
spec:
  action: DENY
  rules:
  - to:
    - operation: {methods: ["DELETE"]}
"""


@pytest.mark.parametrize(("principal", "method", "path", "allowed", "policy"), [
    (SLEEP, "GET", "/status/200?x=1", True, "foo/httpbin-read"),
    (SLEEP, "GET", "/headers", True, "foo/httpbin-read"),
    (SLEEP, "GET", "/ip", False, None),
    (SLEEP, "POST", "/headers", False, None),
    (OPS, "POST", "/anything", True, "foo/httpbin-read"),
    (OPS, "DELETE", "/anything", False, "foo/no-delete"),
    (ANON, "GET", "/headers", False, "istio-system/deny-plaintext"),
])
def test_end_to_end(principal: str, method: str, path: str, allowed: bool, policy: str | None) -> None:
    docs = parse_documents(POLICIES).docs
    _, policies = compile_security("foo", {"app": "httpbin"}, docs)
    verdict = evaluate_http(policies, principal, 8000, method, path)
    assert (verdict.allowed, verdict.policy) == (allowed, policy), verdict.reason
    # TCP to the same pod: the DENY of DELETE (HTTP-only) widens to every TCP connection.
    assert not evaluate_tcp(policies, principal, 8000).allowed


def test_end_to_end_trust_domain() -> None:
    docs = parse_documents(yaml.safe_dump({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p", "namespace": "foo"},
        "spec": {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}]}})).docs
    _, policies = compile_security("foo", {}, docs, trust_domain="example.org")
    assert evaluate_tcp(policies, "spiffe://example.org/ns/default/sa/sleep", 1).allowed
    assert not evaluate_tcp(policies, SLEEP, 1).allowed
