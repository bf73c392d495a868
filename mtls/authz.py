"""Istio AuthorizationPolicy evaluation for one request or connection: pure, and cheap per call.

Theory of operation (Istio's semantics). A DENY policy that matches denies, whatever any ALLOW
policy says. Otherwise, if no ALLOW policy selects the workload, everything is allowed; if some
do, the request is allowed only when one of their rules matches ("no ALLOW policy matched").
An ALLOW policy without rules (``spec: {}``) therefore denies everything, and a rule ``{}``
matches everything. A rule matches when some ``from`` source matches (or it has none) and some
``to`` operation matches (or it has none); inside a source or an operation every field that is
set must match, and a ``not*`` field must not. Values are Istio patterns: exact, "prefix*",
"*suffix", and "*" for any non-empty value, so an unauthenticated peer ("") matches no
principal or namespace and always passes a ``notPrincipals``/``notNamespaces``.

Plain TCP has no method or path. Istio then drops an ALLOW rule that names any HTTP-only field
(methods, paths, their ``not*``) in any of its operations, so ALLOW gets stricter, and ignores
those fields in a DENY rule, so DENY gets wider: TCP traffic is never let through by a field
that could not be checked.

Speed: the sidecar asks per request. Policies are compiled once into an Authorizer: patterns
become an exact-match set plus prefix and suffix tuples (one ``str.startswith`` call covers all
prefixes), ports become sets, and every verdict is built in advance, so a decision allocates
nothing but the principal split (cached). evaluate_http/evaluate_tcp keep the Authorizer of the
last policy tuple they were given: the sidecar passes its snapshot's tuple and compiles once per
snapshot. Callers that hold several policy sets can keep an Authorizer each.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from meshns.snapshot import AuthzOperation, AuthzPolicy, AuthzRule, AuthzSource

_SPIFFE = "spiffe://"
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    policy: str | None  # "<namespace>/<name>" of the policy that decided, None when none did
    reason: str


_NO_POLICY = Verdict(True, None, "no authorization policy applies")
_NO_ALLOW_POLICY = Verdict(True, None, "no DENY policy matched and no ALLOW policy applies")
_NOT_ALLOWED = Verdict(False, None, "no ALLOW policy matched")


class _Patterns:
    """Any of a list of Istio patterns. An empty value never matches (no principal, no namespace)."""

    __slots__ = ("any_value", "exact", "prefixes", "suffixes")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.any_value = "*" in patterns
        self.exact = frozenset(p for p in patterns if p and "*" not in (p[0], p[-1]))
        self.prefixes = tuple(p[:-1] for p in patterns if len(p) > 1 and p[-1] == "*" and p[0] != "*")
        self.suffixes = tuple(p[1:] for p in patterns if len(p) > 1 and p[0] == "*")

    def match(self, value: str) -> bool:
        if not value:
            return False
        return (self.any_value or value in self.exact or value.startswith(self.prefixes)
                or value.endswith(self.suffixes))


def _patterns(values: Sequence[str]) -> _Patterns | None:
    return _Patterns(values) if values else None  # None: the field is not set, so it is no condition


class _Source:
    __slots__ = ("namespaces", "not_namespaces", "not_principals", "principals")

    def __init__(self, source: AuthzSource) -> None:
        self.principals = _patterns([_istio_form(p) for p in source.principals])
        self.not_principals = _patterns([_istio_form(p) for p in source.not_principals])
        self.namespaces = _patterns(source.namespaces)
        self.not_namespaces = _patterns(source.not_namespaces)

    def match(self, peer: str, namespace: str) -> bool:
        if self.principals is not None and not self.principals.match(peer):
            return False
        if self.not_principals is not None and self.not_principals.match(peer):
            return False
        if self.namespaces is not None and not self.namespaces.match(namespace):
            return False
        return self.not_namespaces is None or not self.not_namespaces.match(namespace)


class _Operation:
    __slots__ = ("http_only", "methods", "not_methods", "not_paths", "not_ports", "paths", "ports")

    def __init__(self, op: AuthzOperation) -> None:
        self.ports = frozenset(op.ports) if op.ports else None
        self.not_ports = frozenset(op.not_ports) if op.not_ports else None
        self.methods = _patterns(op.methods)
        self.not_methods = _patterns(op.not_methods)
        self.paths = _patterns(op.paths)
        self.not_paths = _patterns(op.not_paths)
        self.http_only = bool(op.methods or op.not_methods or op.paths or op.not_paths)

    def match_port(self, port: int) -> bool:
        if self.ports is not None and port not in self.ports:
            return False
        return self.not_ports is None or port not in self.not_ports

    def match_http(self, port: int, method: str, path: str) -> bool:
        if not self.match_port(port):
            return False
        if self.methods is not None and not self.methods.match(method):
            return False
        if self.not_methods is not None and self.not_methods.match(method):
            return False
        if self.paths is not None and not self.paths.match(path):
            return False
        return self.not_paths is None or not self.not_paths.match(path)


class _Rule:
    __slots__ = ("operations", "skip_on_tcp", "sources", "verdict")

    def __init__(self, rule: AuthzRule, allow: bool, verdict: Verdict) -> None:
        self.sources = tuple(_Source(s) for s in rule.sources)
        self.operations = tuple(_Operation(o) for o in rule.operations)
        # Istio skips the whole ALLOW rule on TCP if any of its operations is HTTP-only.
        self.skip_on_tcp = allow and any(o.http_only for o in self.operations)
        self.verdict = verdict

    # Plain loops rather than any(<generator>): no allocation per call on the request path.
    def match_source(self, peer: str, namespace: str) -> bool:
        if not self.sources:
            return True
        for source in self.sources:  # noqa: SIM110
            if source.match(peer, namespace):
                return True
        return False

    def match_http(self, peer: str, namespace: str, port: int, method: str, path: str) -> bool:
        if self.operations:
            for op in self.operations:
                if op.match_http(port, method, path):
                    break
            else:
                return False
        return self.match_source(peer, namespace)

    def match_tcp(self, peer: str, namespace: str, port: int) -> bool:
        # Ports are the only operation field TCP has; a DENY rule's HTTP-only fields are dropped here.
        if self.operations:
            for op in self.operations:
                if op.match_port(port):
                    break
            else:
                return False
        return self.match_source(peer, namespace)


class Authorizer:
    """A compiled set of the policies that select one workload; ``http``/``tcp`` decide."""

    __slots__ = ("_allow", "_deny", "_otherwise")

    def __init__(self, policies: Sequence[AuthzPolicy]) -> None:
        deny: list[_Rule] = []
        allow: list[_Rule] = []
        for policy in policies:
            if policy.action not in ("ALLOW", "DENY"):
                raise ValueError(f"policy {policy.name}: unknown action {policy.action!r}")
            is_allow = policy.action == "ALLOW"
            verb = "allowed" if is_allow else "denied"
            for i, rule in enumerate(policy.rules):
                verdict = Verdict(is_allow, policy.name, f"{verb} by {policy.action} policy {policy.name} rules[{i}]")
                (allow if is_allow else deny).append(_Rule(rule, is_allow, verdict))
        self._deny = tuple(deny)
        self._allow = tuple(allow)
        if not policies:
            self._otherwise = _NO_POLICY
        elif any(p.action == "ALLOW" for p in policies):
            self._otherwise = _NOT_ALLOWED
        else:
            self._otherwise = _NO_ALLOW_POLICY

    def http(self, principal: str, port: int, method: str, path: str) -> Verdict:
        if self._otherwise is _NO_POLICY:
            return _NO_POLICY
        peer, namespace = _peer(principal)
        path = _request_path(path)
        for rule in self._deny:
            if rule.match_http(peer, namespace, port, method, path):
                return rule.verdict
        for rule in self._allow:
            if rule.match_http(peer, namespace, port, method, path):
                return rule.verdict
        return self._otherwise

    def tcp(self, principal: str, port: int) -> Verdict:
        if self._otherwise is _NO_POLICY:
            return _NO_POLICY
        peer, namespace = _peer(principal)
        for rule in self._deny:
            if rule.match_tcp(peer, namespace, port):
                return rule.verdict
        for rule in self._allow:
            if not rule.skip_on_tcp and rule.match_tcp(peer, namespace, port):
                return rule.verdict
        return self._otherwise


_last: tuple[Sequence[AuthzPolicy], Authorizer] | None = None


def authorizer(policies: Sequence[AuthzPolicy]) -> Authorizer:
    """The Authorizer for `policies`, reused while the same tuple object is passed again."""
    global _last
    last = _last
    if last is not None and last[0] is policies:
        return last[1]
    built = Authorizer(policies)
    if isinstance(policies, tuple):  # immutable, so identity means same content; a list could change
        _last = (policies, built)
    return built


def evaluate_http(policies: Sequence[AuthzPolicy], principal: str, port: int, method: str, path: str) -> Verdict:
    """`principal`: the peer's SPIFFE URI, "" if unauthenticated; `path`: the request target (query ignored)."""
    return authorizer(policies).http(principal, port, method, path)


def evaluate_tcp(policies: Sequence[AuthzPolicy], principal: str, port: int) -> Verdict:
    return authorizer(policies).tcp(principal, port)


@functools.lru_cache(maxsize=1024)
def _peer(principal: str) -> tuple[str, str]:
    """(Istio's principal form "<td>/ns/<ns>/sa/<sa>", the namespace) of a SPIFFE URI; ("", "") if none."""
    peer = principal.removeprefix(_SPIFFE)
    _, found, rest = peer.partition("/ns/")
    return peer, rest.partition("/")[0] if found else ""


def _istio_form(principal: str) -> str:
    # Policies are parsed without "spiffe://"; tolerate it in hand-built ones rather than never match.
    return principal.removeprefix(_SPIFFE)


def _request_path(target: str) -> str:
    """The path Istio matches: no query or fragment; an absolute-form target reduced to its path."""
    if target[:1] != "/":
        m = _ABSOLUTE_FORM.match(target)
        if m is not None:
            rest = target[m.end():]
            target = rest if rest[:1] == "/" else "/" + rest
    end = target.find("?")
    if end >= 0:
        target = target[:end]
    end = target.find("#")
    return target[:end] if end >= 0 else target
