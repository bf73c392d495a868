"""The control plane's compiler: registry rows and applied config in, per-pod Snapshot out.

Pure: it takes what was read from the registry and returns values; netns.publish writes them.
All the user-facing parsing happened when the config was applied (meshns.istio); here the
stored documents are turned into the sidecar's vocabulary once per change, never per request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from meshns.istio.compile import compile_service
from meshns.istio.parse import ConfigDoc, parse_values
from meshns.istio.security_compile import compile_security
from meshns.model import PodRecord, PodState, ServiceRecord, identity_of
from meshns.registry import ConfigRow
from meshns.snapshot import AuthzPolicy, Endpoint, PeerAuthn, Security, Service, ServicePort, Snapshot


@dataclass(frozen=True)
class PodSecurity:
    identity: str  # "" while the mesh has no CA
    peer_authn: PeerAuthn
    policies: tuple[AuthzPolicy, ...]


def pod_security(pods: Sequence[PodRecord], docs: Sequence[ConfigDoc],
                 trust_domain: str | None) -> dict[str, PodSecurity]:
    """Each pod's identity, effective PeerAuthentication and selected AuthorizationPolicies."""
    out: dict[str, PodSecurity] = {}
    # Replicas share namespace and labels, so their policies are compiled once (a mesh of many
    # hosts recompiles this for every pod of every host after each change).
    compiled: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[PeerAuthn, tuple[AuthzPolicy, ...]]] = {}
    for p in pods:
        key = (p.spec.namespace, tuple(sorted(p.spec.labels)))
        if key not in compiled:
            compiled[key] = compile_security(p.spec.namespace, dict(p.spec.labels), docs,
                                             trust_domain=trust_domain or "cluster.local")
        authn, policies = compiled[key]
        out[p.name] = PodSecurity(identity_of(p, trust_domain), authn, policies)
    return out


def _endpoint(p: PodRecord, sec: dict[str, PodSecurity]) -> Endpoint:
    ps = sec.get(p.name)
    if ps is None:
        return Endpoint(p.name, str(p.ip), p.spec.labels)
    return Endpoint(p.name, str(p.ip), p.spec.labels, ps.identity, ps.peer_authn)


def stored_docs(rows: Sequence[ConfigRow]) -> list[ConfigDoc]:
    """Parse the stored documents again (they were validated when applied)."""
    if not rows:
        return []
    return parse_values((f"registry {r.kind}/{r.namespace}/{r.name}", _load(r.doc)) for r in rows).docs


def _load(doc: str) -> object:
    # Stored as JSON (apply writes json.dumps of the checked document); YAML only as a fallback.
    try:
        return json.loads(doc)
    except ValueError:
        import yaml  # noqa: PLC0415 - rare (documents are stored as JSON); every publish imports this module

        return yaml.safe_load(doc)


def service_host(name: str) -> str:
    """Istio hosts may be FQDNs (reviews.default.svc.cluster.local): the service is the first label."""
    return name.split(".", 1)[0]


def _selected_services(doc: ConfigDoc) -> list[str]:
    """The services a VirtualService (its hosts) or DestinationRule (its host) applies to."""
    spec = doc.raw.get("spec") or {}
    if doc.kind == "VirtualService":
        return list(dict.fromkeys(service_host(str(h)) for h in spec.get("hosts") or ()))
    if doc.kind == "DestinationRule":
        return [service_host(str(spec.get("host", "")))]
    return []


def compile_services(services: Sequence[ServiceRecord], pods: Sequence[PodRecord],
                     docs: Sequence[ConfigDoc], sec: dict[str, PodSecurity] | None = None,
                     ) -> tuple[tuple[Service, ...], list[str]]:
    out: list[Service] = []
    warnings: list[str] = []
    sec = sec or {}
    # Indexed once by service name, not scanned per service: cost grows with pods + services,
    # not pods x services.
    members: dict[str, list[PodRecord]] = {}
    for p in pods:
        if p.state == PodState.READY:
            for name in dict.fromkeys(d.service for d in p.spec.services):
                members.setdefault(name, []).append(p)
    selected: dict[tuple[str, str], list[ConfigDoc]] = {}
    for d in docs:
        for name in _selected_services(d):
            selected.setdefault((d.kind, name), []).append(d)
    for svc in services:
        endpoints = tuple(_endpoint(p, sec) for p in members.get(svc.name, ()))
        vs = selected.get(("VirtualService", svc.name), [])
        dr = selected.get(("DestinationRule", svc.name), [])
        policy = compile_service(svc.name, vs, dr)
        warnings.extend(policy.warnings)
        out.append(Service(
            name=svc.name, vip=str(svc.vip),
            ports=tuple(ServicePort(p, t) for p, t in svc.ports),
            endpoints=endpoints, subsets=policy.subsets, lb=policy.lb, pool=policy.pool,
            outlier=policy.outlier, routes=policy.routes,
        ))
    return tuple(out), warnings


def workloads_of(pods: Sequence[PodRecord], sec: dict[str, PodSecurity] | None = None) -> tuple[Endpoint, ...]:
    return tuple(_endpoint(p, sec or {}) for p in pods)


def snapshot_for(pod: str, generation: int, services: tuple[Service, ...],
                 workloads: tuple[Endpoint, ...] = (), security: Security | None = None) -> Snapshot:
    return Snapshot(version=generation, pod=pod, services=services, workloads=workloads,
                    security=security or Security())


def security_for(pod: str, sec: dict[str, PodSecurity], trust_domain: str | None,
                 revoked: Sequence[str]) -> Security:
    ps = sec.get(pod)
    if ps is None:
        return Security(revoked=tuple(revoked))
    return Security(identity=ps.identity, trust_domain=trust_domain or "cluster.local",
                    peer_authn=ps.peer_authn, policies=ps.policies, revoked=tuple(revoked))


def describe(snapshot: Snapshot) -> str:
    return json.dumps(json.loads(snapshot.to_json()), indent=2, sort_keys=True)
