"""The control plane's compiler: registry rows and applied config in, per-pod Snapshot out.

Pure: it takes what was read from the registry and returns values; netns.publish writes them.
All the user-facing parsing happened when the config was applied (meshns.istio); here the
stored documents are turned into the sidecar's vocabulary once per change, never per request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from meshns.istio.compile import compile_service
from meshns.istio.parse import ConfigDoc, parse_documents
from meshns.model import PodRecord, PodState, ServiceRecord
from meshns.registry import ConfigRow
from meshns.snapshot import Endpoint, Service, ServicePort, Snapshot


def stored_docs(rows: Sequence[ConfigRow]) -> list[ConfigDoc]:
    """Parse the stored documents again (they were validated when applied)."""
    if not rows:
        return []
    text = "\n---\n".join(r.doc for r in rows)  # JSON documents are YAML documents
    return parse_documents(text, source="registry").docs


def service_host(name: str) -> str:
    """Istio hosts may be FQDNs (reviews.default.svc.cluster.local): the service is the first label."""
    return name.split(".", 1)[0]


def _selects(doc: ConfigDoc, service: str) -> bool:
    spec = doc.raw.get("spec") or {}
    if doc.kind == "VirtualService":
        return any(service_host(str(h)) == service for h in spec.get("hosts") or ())
    if doc.kind == "DestinationRule":
        return service_host(str(spec.get("host", ""))) == service
    return False


def compile_services(services: Sequence[ServiceRecord], pods: Sequence[PodRecord],
                     docs: Sequence[ConfigDoc]) -> tuple[tuple[Service, ...], list[str]]:
    out: list[Service] = []
    warnings: list[str] = []
    ready = [p for p in pods if p.state == PodState.READY]
    for svc in services:
        endpoints = tuple(
            Endpoint(p.name, str(p.ip), p.spec.labels)
            for p in ready if any(d.service == svc.name for d in p.spec.services)
        )
        vs = [d for d in docs if d.kind == "VirtualService" and _selects(d, svc.name)]
        dr = [d for d in docs if d.kind == "DestinationRule" and _selects(d, svc.name)]
        policy = compile_service(svc.name, vs, dr)
        warnings.extend(policy.warnings)
        out.append(Service(
            name=svc.name, vip=str(svc.vip),
            ports=tuple(ServicePort(p, t) for p, t in svc.ports),
            endpoints=endpoints, subsets=policy.subsets, lb=policy.lb, pool=policy.pool,
            outlier=policy.outlier, routes=policy.routes,
        ))
    return tuple(out), warnings


def workloads_of(pods: Sequence[PodRecord]) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(p.name, str(p.ip), p.spec.labels) for p in pods)


def snapshot_for(pod: str, generation: int, services: tuple[Service, ...],
                 workloads: tuple[Endpoint, ...] = ()) -> Snapshot:
    return Snapshot(version=generation, pod=pod, services=services, workloads=workloads)


def describe(snapshot: Snapshot) -> str:
    return json.dumps(json.loads(snapshot.to_json()), indent=2, sort_keys=True)
