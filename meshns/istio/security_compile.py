"""Applied PeerAuthentications and AuthorizationPolicies -> what one pod enforces (Istio semantics).

PeerAuthentication has three levels, each overriding the one above where it sets a mode: the
mesh-wide policy (no selector, root namespace), the namespace-wide policy (no selector, the pod's
namespace) and the workload policy (a selector matching the pod, in the pod's namespace). UNSET
inherits; with nothing set the mode is PERMISSIVE. Port-level modes come only from the workload
policy. A policy with a selector in the root namespace applies to no pod, as in Istio.

Istio resolves several policies at one level by age (the oldest wins). meshns keeps no creation
time, so the first by name wins: deterministic across publishes, and silent like Istio.

AuthorizationPolicies in the root namespace apply to every pod of the mesh (with a selector: to
matching pods in any namespace); those in the pod's namespace apply with no selector or a
matching one. All of them reach the pod, in name order; the evaluator (meshns.mtls.authz) gives
DENY its precedence over ALLOW.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from meshns.istio.parse import ConfigDoc
from meshns.istio.security import AuthorizationPolicySpec, Labels, PeerAuthenticationSpec
from meshns.snapshot import AuthzPolicy, AuthzRule, MtlsMode, PeerAuthn

ISTIO_DEFAULT_TRUST_DOMAIN = "cluster.local"


def compile_security(
    pod_namespace: str,
    pod_labels: Mapping[str, str],
    docs: Sequence[ConfigDoc],
    root_namespace: str = "istio-system",
    *,
    trust_domain: str = ISTIO_DEFAULT_TRUST_DOMAIN,
) -> tuple[PeerAuthn, tuple[AuthzPolicy, ...]]:
    """The pod's effective PeerAuthn and the AuthorizationPolicies that select it.

    `trust_domain` is the mesh's: Istio reads the trust domain "cluster.local" in a policy's
    principals as "this mesh's trust domain", so policies written for the default keep working.
    """
    return (_peer_authn(pod_namespace, pod_labels, docs, root_namespace),
            _policies(pod_namespace, pod_labels, docs, root_namespace, trust_domain))


def _selects(selector: Labels | None, labels: Mapping[str, str]) -> bool:
    return selector is None or all(labels.get(k) == v for k, v in selector)


def _peer_authn(namespace: str, labels: Mapping[str, str], docs: Sequence[ConfigDoc], root: str) -> PeerAuthn:
    mesh: PeerAuthenticationSpec | None = None
    ns: PeerAuthenticationSpec | None = None
    workload: PeerAuthenticationSpec | None = None
    for doc in sorted((d for d in docs if d.kind == "PeerAuthentication"), key=lambda d: d.name):
        spec = doc.spec
        if not isinstance(spec, PeerAuthenticationSpec):
            raise TypeError(f"{doc.kind} {doc.name} has a {type(spec).__name__}")
        if spec.selector is None:
            if doc.namespace == root:
                mesh = mesh or spec
            elif doc.namespace == namespace:
                ns = ns or spec
        elif doc.namespace == namespace != root and _selects(spec.selector, labels):
            workload = workload or spec
    mode: MtlsMode = "PERMISSIVE"
    for level in (mesh, ns, workload):
        if level is not None and level.mode is not None:
            mode = level.mode
    ports = tuple((port, port_mode or mode) for port, port_mode in workload.ports) if workload else ()
    return PeerAuthn(mode=mode, ports=ports)


def _policies(namespace: str, labels: Mapping[str, str], docs: Sequence[ConfigDoc], root: str,
              trust_domain: str) -> tuple[AuthzPolicy, ...]:
    out: list[AuthzPolicy] = []
    for doc in docs:
        if doc.kind != "AuthorizationPolicy" or doc.namespace not in (root, namespace):
            continue
        spec = doc.spec
        if not isinstance(spec, AuthorizationPolicySpec):
            raise TypeError(f"{doc.kind} {doc.name} has a {type(spec).__name__}")
        if _selects(spec.selector, labels):
            rules = spec.rules
            if trust_domain != ISTIO_DEFAULT_TRUST_DOMAIN:
                rules = tuple(_local_trust_domain(r, trust_domain) for r in rules)
            out.append(AuthzPolicy(name=f"{doc.namespace}/{doc.name}", action=spec.action, rules=rules))
    return tuple(sorted(out, key=lambda p: p.name))


def _local_trust_domain(rule: AuthzRule, trust_domain: str) -> AuthzRule:
    def rewrite(principals: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_in_trust_domain(p, trust_domain) for p in principals)

    sources = tuple(replace(s, principals=rewrite(s.principals), not_principals=rewrite(s.not_principals))
                    for s in rule.sources)
    return replace(rule, sources=sources)


def _in_trust_domain(principal: str, trust_domain: str) -> str:
    # Only a full "<td>/ns/<ns>/sa/<sa>" names a trust domain (Istio's isTrustDomainBeingEnforced).
    if principal.count("/") == 4 and principal.startswith(ISTIO_DEFAULT_TRUST_DOMAIN + "/"):
        return trust_domain + principal[len(ISTIO_DEFAULT_TRUST_DOMAIN):]
    return principal
