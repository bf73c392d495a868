"""meshns.istio.security: PeerAuthentication / AuthorizationPolicy YAML -> typed specs, errors with their path."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshns.cli.config_cmds import KINDS, missing_service_warnings
from meshns.errors import UserError
from meshns.istio.parse import parse_documents
from meshns.istio.render import to_json, to_yaml
from meshns.istio.security import AuthorizationPolicySpec, PeerAuthenticationSpec
from meshns.snapshot import AuthzOperation, AuthzRule, AuthzSource


def pa_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "pa", "namespace": "foo"}, "spec": spec}


def ap_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "ap", "namespace": "foo"}, "spec": spec}


def ap_rule(**rule: Any) -> dict[str, Any]:
    """An AuthorizationPolicy whose only rule is `rule`."""
    return ap_doc(rules=[rule])


def ap_source(**source: Any) -> dict[str, Any]:
    return ap_rule(**{"from": [{"source": source}]})


def ap_operation(**operation: Any) -> dict[str, Any]:
    return ap_rule(to=[{"operation": operation}])


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def parse_one(doc: dict[str, Any] | str) -> tuple[Any, list[str]]:
    result = parse_documents(doc if isinstance(doc, str) else dump(doc), "t.yaml")
    assert len(result.docs) == 1
    return result.docs[0].spec, result.warnings


# -- examples in the shape of Istio's documentation ----------------------------------------------

MESH_STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
"""

WORKLOAD_PORTS = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
    "9090":
      mode: UNSET
"""

ALLOW_READ = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-read
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
        ports: ["8080"]
"""

DENY_GET = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
        notPaths: ["/healthz"]
    from:
    - source:
        notNamespaces: ["foo"]
        notPrincipals: ["*"]
"""

ALLOW_NOTHING = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: foo
spec:
  {}
"""

ALLOW_ALL = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-all
  namespace: foo
spec:
  rules:
  - {}
"""

EXAMPLES = [MESH_STRICT, WORKLOAD_PORTS, ALLOW_READ, DENY_GET, ALLOW_NOTHING, ALLOW_ALL]


def test_mesh_wide_strict() -> None:
    spec, warnings = parse_one(MESH_STRICT)
    assert spec == PeerAuthenticationSpec(selector=None, mode="STRICT", ports=())
    assert warnings == []


def test_workload_port_levels_with_int_and_string_keys() -> None:
    result = parse_documents(WORKLOAD_PORTS)
    (doc,) = result.docs
    assert (doc.kind, doc.namespace, doc.api_version) == ("PeerAuthentication", "foo", "security.istio.io/v1beta1")
    assert doc.spec == PeerAuthenticationSpec(selector=(("app", "finance"),), mode="STRICT",
                                              ports=((8080, "DISABLE"), (9090, None)))
    assert doc.raw["spec"]["portLevelMtls"] == {"8080": {"mode": "DISABLE"}, "9090": {"mode": "UNSET"}}
    assert result.warnings == []


@pytest.mark.parametrize(("mtls", "mode"), [({"mode": "UNSET"}, None), ({}, None), (None, None),
                                            ({"mode": "DISABLE"}, "DISABLE"), ({"mode": "PERMISSIVE"}, "PERMISSIVE")])
def test_peer_authentication_modes(mtls: dict[str, str] | None, mode: str | None) -> None:
    spec, _ = parse_one(pa_doc(mtls=mtls))
    assert spec.mode == mode


def test_allow_read_example() -> None:
    spec, warnings = parse_one(ALLOW_READ)
    assert warnings == []
    assert spec == AuthorizationPolicySpec(
        selector=(("app", "httpbin"), ("version", "v1")), action="ALLOW",
        rules=(AuthzRule(
            sources=(AuthzSource(principals=("cluster.local/ns/default/sa/sleep",)), AuthzSource(namespaces=("dev",))),
            operations=(AuthzOperation(methods=("GET",), paths=("/info*",)),
                        AuthzOperation(methods=("POST",), paths=("/data",), ports=(8080,))),
        ),),
    )
    assert spec.has_rules


def test_deny_example_with_not_fields() -> None:
    spec, _ = parse_one(DENY_GET)
    assert spec.action == "DENY"
    assert spec.rules == (AuthzRule(sources=(AuthzSource(not_principals=("*",), not_namespaces=("foo",)),),
                                    operations=(AuthzOperation(methods=("GET",), not_paths=("/healthz",)),)),)


def test_allow_nothing_and_allow_all_differ() -> None:
    nothing, _ = parse_one(ALLOW_NOTHING)
    everything, _ = parse_one(ALLOW_ALL)
    assert nothing == AuthorizationPolicySpec(selector=None, action="ALLOW", rules=())
    assert not nothing.has_rules
    assert everything.rules == (AuthzRule(),) and everything.has_rules


@pytest.mark.parametrize("spec", ["spec: null\n", "spec: {}\n", ""])
def test_missing_or_empty_spec_is_empty_for_security_kinds(spec: str) -> None:
    head = "apiVersion: security.istio.io/v1\nmetadata: {name: x}\n"
    ap, _ = parse_one(head + "kind: AuthorizationPolicy\n" + spec)
    pa, _ = parse_one(head + "kind: PeerAuthentication\n" + spec)
    assert ap == AuthorizationPolicySpec(selector=None, action="ALLOW", rules=())
    assert pa == PeerAuthenticationSpec(selector=None, mode=None, ports=())


def test_ports_as_strings_or_ints_and_every_field() -> None:
    spec, _ = parse_one(ap_operation(ports=["80", 8080], notPorts=[9090, "65535"], methods=["GET"],
                                     notMethods=["DELETE"], paths=["/a", "*.js"], notPaths=["/admin*"]))
    assert spec.rules[0].operations == (AuthzOperation(ports=(80, 8080), not_ports=(9090, 65535), methods=("GET",),
                                                       not_methods=("DELETE",), paths=("/a", "*.js"),
                                                       not_paths=("/admin*",)),)
    spec, _ = parse_one(ap_source(principals=["*"], notPrincipals=["cluster.local/ns/x/*"],
                                  namespaces=["*-prod", "team-*", "*"], notNamespaces=["kube-system"]))
    assert spec.rules[0].sources == (AuthzSource(principals=("*",), not_principals=("cluster.local/ns/x/*",),
                                                 namespaces=("*-prod", "team-*", "*"),
                                                 not_namespaces=("kube-system",)),)


def test_deny_action_and_default_allow() -> None:
    assert parse_one(ap_doc(action="DENY", rules=[{}]))[0].action == "DENY"
    assert parse_one(ap_doc(rules=[{}]))[0].action == "ALLOW"


@pytest.mark.parametrize("doc", [
    ap_source(principals=["*"], ipBlocks=[]),
    ap_source(principals=["*"], requestPrincipals=None),
    ap_rule(when=[]),
    ap_doc(rules=[{}], targetRefs=[]),
    ap_operation(ports=["80"], hosts=[]),
], ids=["ipBlocks", "requestPrincipals", "when", "targetRefs", "hosts"])
def test_refused_fields_given_empty_are_unset(doc: dict[str, Any]) -> None:
    spec, warnings = parse_one(doc)  # protobuf JSON reads null and [] as "not set"
    assert spec.has_rules and warnings == []


# -- apiVersion and kind -----------------------------------------------------------------------


@pytest.mark.parametrize(("api_version", "kind"), [
    ("security.istio.io/v1", "VirtualService"),
    ("security.istio.io/v1beta1", "DestinationRule"),
    ("networking.istio.io/v1", "PeerAuthentication"),
    ("networking.istio.io/v1beta1", "AuthorizationPolicy"),
    ("security.istio.io/v1alpha1", "AuthorizationPolicy"),
    ("security.istio.io/v1", "RequestAuthentication"),
])
def test_kinds_need_their_own_api_group(api_version: str, kind: str) -> None:
    doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(UserError, match=rf"^a.yaml doc 1 \({kind} x\): {api_version} {kind} is not supported "
                                        r"\(meshns applies VirtualService and DestinationRule of .*PeerAuthentication"):
        parse_documents(dump(doc), "a.yaml")


@pytest.mark.parametrize("api_version", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_both_security_versions_accepted(api_version: str) -> None:
    for doc in (pa_doc(), ap_doc()):
        doc["apiVersion"] = api_version
        assert parse_documents(dump(doc)).docs[0].api_version == api_version


def test_vs_still_requires_a_spec() -> None:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"}}
    with pytest.raises(UserError, match=r"\(VirtualService x\): spec: required$"):
        parse_documents(dump(doc))


# -- errors ------------------------------------------------------------------------------------

WIDENS = "refused rather than ignored: dropping a match condition silently widens the rule, and a wider ALLOW rule"
SOURCE = "spec.rules[0].from[0].source"
OPERATION = "spec.rules[0].to[0].operation"

# (document, expected message fragment incl. the field path)
ERRORS: list[tuple[dict[str, Any], str]] = [
    # PeerAuthentication
    (pa_doc(mtls={"mode": "strict"}), "spec.mtls.mode: must be one of UNSET, DISABLE, PERMISSIVE, STRICT, got 'strict'"),
    (pa_doc(mtls={"mood": "STRICT"}),
     "spec.mtls.mood: unknown field (not in Istio's PeerAuthentication.MutualTLS); did you mean 'mode'?"),
    (pa_doc(mtls="STRICT"), 'spec.mtls: must be an object (PeerAuthentication.MutualTLS), got "STRICT"'),
    (pa_doc(mtl={"mode": "STRICT"}), "spec.mtl: unknown field (not in Istio's PeerAuthentication); did you mean 'mtls'?"),
    (pa_doc(targetRef={"kind": "Service"}), "spec.targetRef: unknown field (not in Istio's PeerAuthentication)"),
    (pa_doc(portLevelMtls={"80": {"mode": "DISABLE"}}),
     "spec.portLevelMtls: requires a selector with matchLabels (Istio allows port-level mTLS only in a workload policy)"),
    (pa_doc(selector={}, portLevelMtls={"80": {"mode": "DISABLE"}}), "spec.portLevelMtls: requires a selector"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls={}), "spec.portLevelMtls: must not be empty"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls=[80]),
     "spec.portLevelMtls: must be a map of port number to {mode: ...}, got [80]"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls={"http": {"mode": "STRICT"}}),
     "spec.portLevelMtls.http: is not a port number 1..65535 (got key 'http')"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls={0: {"mode": "STRICT"}}),
     "spec.portLevelMtls.0: is not a port number 1..65535"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls={"65536": {"mode": "STRICT"}}),
     "spec.portLevelMtls.65536: is not a port number"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls={True: {"mode": "STRICT"}}),
     "spec.portLevelMtls: keys must be strings, got true (quote it)"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls={"80": {"mode": "STRICT"}, 80: {"mode": "DISABLE"}}),
     "spec.portLevelMtls.80: is given twice (80 and '80')"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls={"080": {}, "80": {}}),
     "spec.portLevelMtls.80: port 80 is given twice"),
    (pa_doc(selector={"matchLabels": {"app": "a"}}, portLevelMtls={"80": {"mode": "ON"}}),
     "spec.portLevelMtls.80.mode: must be one of UNSET, DISABLE, PERMISSIVE, STRICT, got 'ON'"),
    (pa_doc(selector={"matchLabels": {"app": 1}}), 'spec.selector.matchLabels.app: must be a string (quote numbers: "1")'),
    (pa_doc(selector={"matchLabels": {"app": "web*"}}),
     "spec.selector.matchLabels.app: wildcards are not supported in a selector"),
    (pa_doc(selector={"matchLabels": ["app=web"]}), "spec.selector.matchLabels: must be an object"),
    (pa_doc(selector={"labels": {"app": "web"}}),
     "spec.selector.labels: unknown field (not in Istio's WorkloadSelector)"),
    # AuthorizationPolicy: envelope
    (ap_doc(action="CUSTOM", provider={"name": "ext"}), "spec.action: CUSTOM is not supported by meshns (only ALLOW and DENY)"),
    (ap_doc(action="AUDIT"), "spec.action: AUDIT is not supported by meshns (only ALLOW and DENY)"),
    (ap_doc(action="allow"), "spec.action: must be one of ALLOW, DENY, AUDIT, CUSTOM, got 'allow'"),
    (ap_doc(action=1), "spec.action: must be a string, got 1"),
    (ap_doc(provider={"name": "ext"}),
     "spec.provider: is for action CUSTOM (external authorization), which meshns does not support"),
    (ap_doc(targetRef={"kind": "Service", "name": "x"}),
     "spec.targetRef: is not implemented by meshns (select workloads with selector.matchLabels); refused rather than "
     "ignored: without it the policy would apply to every workload in the namespace"),
    (ap_doc(targetRefs=[{"kind": "Service", "name": "x"}]), "spec.targetRefs: is not implemented by meshns"),
    (ap_doc(rule=[{}]), "spec.rule: unknown field (not in Istio's AuthorizationPolicy); did you mean 'rules'?"),
    (ap_doc(rules={}), "spec.rules: must be a list, got {}"),
    (ap_doc(rules=[None]), "spec.rules[0]: must be an object (Rule), got null"),
    (ap_doc(selector={"matchLabels": {"version": 2}}), "spec.selector.matchLabels.version: must be a string"),
    # rules
    (ap_rule(when=[{"key": "request.headers[x]", "values": ["1"]}]),
     f"spec.rules[0].when: (conditions) is not implemented by meshns; {WIDENS}"),
    (ap_rule(**{"from": []}), "spec.rules[0].from: must not be empty"),
    (ap_rule(**{"from": [{}]}), "spec.rules[0].from[0].source: required"),
    (ap_rule(**{"from": [{"sorce": {}}]}),
     "spec.rules[0].from[0].sorce: unknown field (not in Istio's Rule.From); did you mean 'source'?"),
    (ap_rule(to=[]), "spec.rules[0].to: must not be empty"),
    (ap_rule(to=[{}]), "spec.rules[0].to[0].operation: required"),
    (ap_rule(to={"operation": {"ports": ["80"]}}), "spec.rules[0].to: must be a list"),
    (ap_rule(form=[]), "spec.rules[0].form: unknown field (not in Istio's Rule); did you mean 'from'?"),
    # sources
    (ap_source(), f"{SOURCE}: must set at least one of principals, notPrincipals, namespaces, notNamespaces"),
    (ap_source(principals=[]), f"{SOURCE}: must set at least one of"),
    (ap_source(principals="cluster.local/ns/a/sa/b"), f'{SOURCE}.principals: must be a list, got "cluster.local'),
    (ap_source(principals=[""]), f"{SOURCE}.principals[0]: must not be empty (Istio refuses empty values)"),
    (ap_source(principals=["*", 7]), f"{SOURCE}.principals[1]: must be a string, got 7"),
    (ap_source(principals=["spiffe://cluster.local/ns/a/sa/b"]),
     f'{SOURCE}.principals[0]: must be written without "spiffe://"'),
    (ap_source(notPrincipals=["spiffe://x"]), f'{SOURCE}.notPrincipals[0]: must be written without "spiffe://"'),
    (ap_source(namespaces=["a*b"]), f'{SOURCE}.namespaces[0]: "*" is supported only as the whole value'),
    (ap_source(notNamespaces=["*a*"]), f'{SOURCE}.notNamespaces[0]: "*" is supported only as the whole value'),
    (ap_source(namespaces=["**"]), f'{SOURCE}.namespaces[0]: "*" is supported only'),
    (ap_source(principal=["*"]), f"{SOURCE}.principal: unknown field (not in Istio's Source); did you mean 'principals'?"),
    # operations
    (ap_operation(), f"{OPERATION}: must set at least one of ports, notPorts, methods, notMethods, paths, notPaths"),
    (ap_operation(ports=["http"]), f'{OPERATION}.ports[0]: must be a port number 1..65535 (Istio writes it as a string: '
                                   f'"8080"), got "http"'),
    (ap_operation(ports=["0"]), f"{OPERATION}.ports[0]: must be a port number 1..65535"),
    (ap_operation(notPorts=[70000]), f"{OPERATION}.notPorts[0]: must be a port number 1..65535"),
    (ap_operation(ports=[True]), f"{OPERATION}.ports[0]: must be a port number 1..65535 (Istio writes it as a string: "
                                 f'"8080"), got true'),
    (ap_operation(ports=[" 80"]), f"{OPERATION}.ports[0]: must be a port number"),
    (ap_operation(methods=[""]), f"{OPERATION}.methods[0]: must not be empty"),
    (ap_operation(paths=["/api/{*}/x"]), f"{OPERATION}.paths[0]: path templates ({{*}}, {{**}}) are not implemented"),
    (ap_operation(notPaths=["/{**}"]), f"{OPERATION}.notPaths[0]: path templates"),
    (ap_operation(path=["/"]), f"{OPERATION}.path: unknown field (not in Istio's Operation); did you mean 'paths'?"),
]

# Match fields meshns does not evaluate: an error naming the field, never a warning.
REFUSED_SOURCE = ["requestPrincipals", "notRequestPrincipals", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                  "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts"]
ERRORS += [(ap_source(principals=["*"], **{field: ["x"]}), f"{SOURCE}.{field}: is not implemented by meshns; {WIDENS}")
           for field in REFUSED_SOURCE]
ERRORS += [(ap_operation(ports=["80"], **{field: ["x.example"]}),
            f"{OPERATION}.{field}: is not implemented by meshns; {WIDENS}") for field in ("hosts", "notHosts")]


@pytest.mark.parametrize(("doc", "expected"), ERRORS, ids=[e[1][:70] for e in ERRORS])
def test_errors_name_the_document_and_field(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(UserError) as info:
        parse_documents(dump(pa_doc(), doc), "sec.yaml")
    message = str(info.value)
    # Keys YAML can't carry through JSON are refused before the document is named (as for every kind).
    named = "keys must be strings" not in expected and "is given twice (" not in expected
    prefix = f"sec.yaml doc 2 ({doc['kind']} {doc['metadata']['name']}): " if named else "sec.yaml doc 2: "
    assert message.startswith(prefix)
    assert expected in message


def test_error_message_shape() -> None:
    with pytest.raises(UserError, match=r"^p.yaml doc 1 \(AuthorizationPolicy ap\): "
                                        r"spec.rules\[0\].from\[0\].source.ipBlocks: is not implemented by meshns; "
                                        r"refused rather than ignored: dropping a match condition silently widens the "
                                        r"rule, and a wider ALLOW rule admits traffic the policy was written to keep "
                                        r"out$"):
        parse_documents(dump(ap_source(ipBlocks=["10.0.0.0/8"])), "p.yaml")


# -- warnings ----------------------------------------------------------------------------------


def test_selector_without_labels_warns_that_it_is_namespace_wide() -> None:
    spec, warnings = parse_one(ap_doc(selector={}, rules=[{}]))
    assert spec.selector is None
    assert warnings == ["AuthorizationPolicy ap: spec.selector has no matchLabels, so the policy applies to the whole "
                        "namespace (as in Istio)"]
    spec, warnings = parse_one(pa_doc(selector={"matchLabels": {}}, mtls={"mode": "STRICT"}))
    assert spec.selector is None and len(warnings) == 1


def test_envelope_warnings_as_for_networking_kinds() -> None:
    doc = ap_doc(rules=[{}])
    doc["status"] = {"validationMessages": []}
    doc["metadata"]["uid"] = "1"
    _, warnings = parse_one(doc)
    assert warnings == ["AuthorizationPolicy ap: status is not implemented by meshns; ignored",
                        "AuthorizationPolicy ap: metadata.uid is not implemented by meshns; ignored"]


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [*EXAMPLES, "\n---\n".join(EXAMPLES)])
def test_round_trip(text: str) -> None:
    docs = parse_documents(text).docs
    assert parse_documents(to_yaml(docs)).docs == docs
    assert parse_documents(to_json(docs)).docs == docs
    assert json.loads(to_json(docs))["items"] == [d.raw for d in docs]


def test_round_trip_keeps_spelling() -> None:
    out = to_yaml(parse_documents(ALLOW_READ).docs)
    assert "- '8080'" in out and out.index("selector:") < out.index("action: ALLOW") < out.index("rules:")


_patterns = st.sampled_from(["*", "cluster.local/ns/a/sa/b", "cluster.local/ns/a/*", "*/sa/b", "x"])
_ports = st.one_of(st.integers(1, 65535), st.integers(1, 65535).map(str))


@st.composite
def _policies(draw: st.DrawFn) -> dict[str, Any]:
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        rule: dict[str, Any] = {}
        if draw(st.booleans()):
            rule["from"] = [{"source": {draw(st.sampled_from(["principals", "notPrincipals"])):
                                        draw(st.lists(_patterns, min_size=1, max_size=3))}}]
        if draw(st.booleans()):
            rule["to"] = [{"operation": {"ports": draw(st.lists(_ports, min_size=1, max_size=3)),
                                         "methods": draw(st.lists(st.sampled_from(["GET", "POST"]), max_size=2))}}]
        rules.append(rule)
    doc = ap_doc(action=draw(st.sampled_from(["ALLOW", "DENY"])), rules=rules)
    doc["metadata"]["name"] = draw(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True))
    return doc


@settings(deadline=None)
@given(st.lists(_policies(), min_size=1, max_size=3, unique_by=lambda d: d["metadata"]["name"]))
def test_round_trip_property(raw_docs: list[dict[str, Any]]) -> None:
    docs = parse_documents(dump(*raw_docs)).docs
    assert [d.raw for d in docs] == raw_docs
    assert parse_documents(to_yaml(docs)).docs == docs
    assert parse_documents(to_json(docs)).docs == docs


def test_raw_document_is_not_changed_by_parsing() -> None:
    doc = copy.deepcopy(ap_operation(ports=[80, "81"]))
    (parsed,) = parse_documents(dump(doc)).docs
    assert parsed.raw == doc


# -- CLI helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [
    ("peerauthentication", "PeerAuthentication"), ("peerauthentications", "PeerAuthentication"),
    ("pa", "PeerAuthentication"), ("authorizationpolicy", "AuthorizationPolicy"),
    ("authorizationpolicies", "AuthorizationPolicy"), ("ap", "AuthorizationPolicy"),
    ("vs", "VirtualService"), ("dr", "DestinationRule"),
])
def test_get_kind_names(name: str, kind: str) -> None:
    assert KINDS[name] == kind


def test_missing_service_warning_skips_security_kinds() -> None:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r"},
          "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}}
    docs = parse_documents(dump(vs, ap_doc(rules=[{}]), pa_doc(mtls={"mode": "STRICT"}))).docs
    assert missing_service_warnings(docs, set()) == ["VirtualService r: service 'reviews' does not exist (yet)"]
    assert missing_service_warnings(docs, {"reviews"}) == []
