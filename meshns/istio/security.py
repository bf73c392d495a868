"""PeerAuthentication and AuthorizationPolicy (security.istio.io) spec -> typed specs, checked field by field.

Authorization is where "valid Istio that meshns ignores, with a warning" would be wrong: a match
condition dropped from a rule makes the rule match more traffic, so an ALLOW rule would admit
requests its author meant to keep out. Every match field meshns cannot evaluate is therefore an
error (schema ``refused``), never a warning. Istio's own validation rules (an empty ``from``,
an empty source, an empty value, port-level mTLS without a selector) are errors here too.

Specs hold the snapshot's types (AuthzRule, MtlsMode) so security_compile only chooses among
already-valid documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from meshns.istio import schema as S
from meshns.istio.reader import Node, show
from meshns.snapshot import AuthzAction, AuthzOperation, AuthzRule, AuthzSource, MtlsMode

Labels = tuple[tuple[str, str], ...]
T = TypeVar("T")

_MODES: dict[str, MtlsMode | None] = {"UNSET": None, "DISABLE": "DISABLE", "PERMISSIVE": "PERMISSIVE",
                                      "STRICT": "STRICT"}
_ACTIONS: tuple[AuthzAction, ...] = ("ALLOW", "DENY")
_PORT = re.compile(r"[0-9]{1,5}")

_WIDENS = ("is not implemented by meshns; refused rather than ignored: dropping a match condition silently "
           "widens the rule, and a wider ALLOW rule admits traffic the policy was written to keep out")
_TARGET = ("is not implemented by meshns (select workloads with selector.matchLabels); refused rather than "
           "ignored: without it the policy would apply to every workload in the namespace")
_WHY_REFUSED = {
    "targetRef": _TARGET,
    "targetRefs": _TARGET,
    "provider": "is for action CUSTOM (external authorization), which meshns does not support",
    "when": f"(conditions) {_WIDENS}",
}


@dataclass(frozen=True)
class PeerAuthenticationSpec:
    selector: Labels | None  # None: namespace-wide (mesh-wide in the root namespace)
    mode: MtlsMode | None  # None: UNSET, inherit from the level above
    ports: tuple[tuple[int, MtlsMode | None], ...] = ()  # sorted by port; None: this policy's effective mode


@dataclass(frozen=True)
class AuthorizationPolicySpec:
    selector: Labels | None  # None: every workload of the namespace (of the mesh in the root namespace)
    action: AuthzAction
    rules: tuple[AuthzRule, ...] = ()

    @property
    def has_rules(self) -> bool:
        """False for ``spec: {}``: as ALLOW that matches nothing, so it denies every request."""
        return bool(self.rules)


def parse_peer_authentication(spec: Node) -> PeerAuthenticationSpec:
    spec.obj(S.PEER_AUTHENTICATION)
    selector = _selector(spec.get("selector"))
    mtls = spec.get("mtls")
    levels = spec.get("portLevelMtls")
    ports: dict[int, MtlsMode | None] = {}
    if levels is not None:
        if selector is None:
            # Istio's validation: a namespace- or mesh-wide policy has no workload whose ports it could name.
            levels.fail("requires a selector with matchLabels (Istio allows port-level mTLS only in a "
                        "workload policy)")
        entries = levels.items("a map of port number to {mode: ...}")
        if not entries:
            levels.fail("must not be empty (give at least one port, or leave portLevelMtls out)")
        for key, node in entries:
            if not _PORT.fullmatch(key) or not 1 <= int(key) <= 65535:
                node.fail(f"is not a port number 1..65535 (got key {key!r})")
            if int(key) in ports:
                node.fail(f"port {int(key)} is given twice")
            ports[int(key)] = _mode(node)
    return PeerAuthenticationSpec(selector=selector, mode=_mode(mtls) if mtls else None,
                                  ports=tuple(sorted(ports.items())))


def parse_authorization_policy(spec: Node) -> AuthorizationPolicySpec:
    spec.obj(S.AUTHORIZATION_POLICY)
    action = _action(spec.get("action"))
    _refuse(spec, S.AUTHORIZATION_POLICY)
    selector = _selector(spec.get("selector"))
    rules = spec.get("rules")
    return AuthorizationPolicySpec(selector=selector, action=action,
                                   rules=tuple(_rule(r) for r in rules.list_()) if rules else ())


def _selector(node: Node | None) -> Labels | None:
    if node is None:
        return None
    node.obj(S.WORKLOAD_SELECTOR)
    labels = node.get("matchLabels")
    pairs: list[tuple[str, str]] = []
    for key, value in labels.items() if labels else ():
        text = value.str_(what='a string (quote numbers: "1")')
        if "*" in key or "*" in text:
            value.fail("wildcards are not supported in a selector (Istio refuses them too)")
        pairs.append((key, text))
    if not pairs:
        # Istio reads a selector without labels as no selector at all; say so, since it widens the policy.
        node.warn("has no matchLabels, so the policy applies to the whole namespace (as in Istio)")
        return None
    return tuple(pairs)


def _mode(node: Node) -> MtlsMode | None:
    node.obj(S.MUTUAL_TLS)
    mode = node.get("mode")
    if mode is None:
        return None
    name = mode.str_()
    if name not in _MODES:
        mode.fail(f"must be one of {', '.join(_MODES)}, got {name!r}")
    return _MODES[name]


def _action(node: Node | None) -> AuthzAction:
    if node is None:
        return "ALLOW"
    name = node.str_()
    if name in ("CUSTOM", "AUDIT"):
        node.fail(f"{name} is not supported by meshns (only ALLOW and DENY)")
    for action in _ACTIONS:
        if name == action:
            return action
    node.fail(f"must be one of ALLOW, DENY, AUDIT, CUSTOM, got {name!r}")


def _refuse(node: Node, schema: S.Schema) -> None:
    """Fail on the first refused field that is set (null and [] are unset, as in protobuf JSON)."""
    for key, child in node.items():
        if key in schema.refused and child.value not in (None, []):
            child.fail(_WHY_REFUSED.get(key, _WIDENS))


def _rule(node: Node) -> AuthzRule:
    node.obj(S.AUTHZ_RULE)
    _refuse(node, S.AUTHZ_RULE)
    return AuthzRule(sources=_clauses(node.get("from"), S.AUTHZ_FROM, "source", _source),
                     operations=_clauses(node.get("to"), S.AUTHZ_TO, "operation", _operation))


def _clauses(node: Node | None, schema: S.Schema, key: str, parse: Callable[[Node], T]) -> tuple[T, ...]:
    """rules[].from / rules[].to: absent is "any"; present must list at least one clause (Istio)."""
    if node is None:
        return ()
    out = []
    for item in node.list_(non_empty=True):
        item.obj(schema)
        out.append(parse(item.req(key)))
    return tuple(out)


def _source(node: Node) -> AuthzSource:
    node.obj(S.AUTHZ_SOURCE)
    _refuse(node, S.AUTHZ_SOURCE)
    source = AuthzSource(
        principals=_strings(node.get("principals"), _principal),
        not_principals=_strings(node.get("notPrincipals"), _principal),
        namespaces=_strings(node.get("namespaces"), _namespace),
        not_namespaces=_strings(node.get("notNamespaces"), _namespace),
    )
    if source == AuthzSource():
        node.fail("must set at least one of principals, notPrincipals, namespaces, notNamespaces (Istio refuses "
                  "an empty source)")
    return source


def _operation(node: Node) -> AuthzOperation:
    node.obj(S.AUTHZ_OPERATION)
    _refuse(node, S.AUTHZ_OPERATION)
    op = AuthzOperation(
        ports=_ports(node.get("ports")),
        not_ports=_ports(node.get("notPorts")),
        methods=_strings(node.get("methods"), None),
        not_methods=_strings(node.get("notMethods"), None),
        paths=_strings(node.get("paths"), _path),
        not_paths=_strings(node.get("notPaths"), _path),
    )
    if op == AuthzOperation():
        node.fail("must set at least one of ports, notPorts, methods, notMethods, paths, notPaths (Istio refuses "
                  "an empty operation)")
    return op


def _strings(node: Node | None, check: Callable[[Node, str], None] | None) -> tuple[str, ...]:
    if node is None:
        return ()
    out = []
    for item in node.list_():
        text = item.str_()
        if not text:
            item.fail("must not be empty (Istio refuses empty values)")
        if check is not None:
            check(item, text)
        out.append(text)
    return tuple(out)


def _principal(node: Node, text: str) -> None:
    # Istio prepends "spiffe://" itself; written out, the value could never match, which would
    # silently disable a DENY rule or a notPrincipals exclusion.
    if text.startswith("spiffe://"):
        node.fail(f'must be written without "spiffe://" (Istio\'s form: <trust-domain>/ns/<namespace>/sa/'
                  f"<account>), got {show(text)}")


def _namespace(node: Node, text: str) -> None:
    # Istio turns every "*" of a namespace into a regex wildcard; meshns matches the patterns it uses
    # everywhere else (exact, prefix*, *suffix, *), so refuse any other placement rather than misread it.
    if text.count("*") > 1 or "*" in text[1:-1]:
        node.fail(f'"*" is supported only as the whole value, a prefix ("*-prod") or a suffix ("team-*"), '
                  f"got {show(text)}")


def _path(node: Node, text: str) -> None:
    # Istio >= 1.22 path templates; read literally they would never match, which would silently
    # disable a DENY rule or a notPaths exclusion.
    if "{*}" in text or "{**}" in text:
        node.fail(f"path templates ({{*}}, {{**}}) are not implemented by meshns, got {show(text)}")


def _ports(node: Node | None) -> tuple[int, ...]:
    if node is None:
        return ()
    out = []
    for item in node.list_():
        value = item.value
        if isinstance(value, str) and _PORT.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            item.fail(f'must be a port number 1..65535 (Istio writes it as a string: "8080"), got {show(item.value)}')
        out.append(value)
    return tuple(out)
