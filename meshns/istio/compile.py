"""Applied VirtualServices and DestinationRules -> the policy of one service, as the snapshot holds it.

Parse already validated and converted each document on its own; what is left here needs several
documents at once: which of them apply to the service, the subset cross-check between a
VirtualService and a DestinationRule, and the catch-all route that guarantees every request
matches some route (a route naming a missing subset is kept: the data plane answers it with 503,
as Envoy does with no healthy upstream, and the user was warned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from meshns.istio.destinationrule import DestinationRuleSpec
from meshns.istio.parse import ConfigDoc
from meshns.istio.virtualservice import VirtualServiceSpec
from meshns.snapshot import ConnectionPool, HttpRoute, LbPolicy, OutlierDetection, Subset

T = TypeVar("T", VirtualServiceSpec, DestinationRuleSpec)


@dataclass(frozen=True)
class ServicePolicy:
    routes: tuple[HttpRoute, ...] = (HttpRoute(),)  # first match wins; the last one matches all
    subsets: tuple[Subset, ...] = ()
    lb: LbPolicy = "least_request"
    pool: ConnectionPool = field(default_factory=ConnectionPool)
    outlier: OutlierDetection = field(default_factory=OutlierDetection)
    warnings: tuple[str, ...] = ()


def compile_service(
    service_name: str,
    virtual_services: Sequence[ConfigDoc],
    destination_rules: Sequence[ConfigDoc],
) -> ServicePolicy:
    """The policy for `service_name`. Both sequences are in the order applied, oldest first."""
    warnings: list[str] = []
    vs = _pick(service_name, virtual_services, VirtualServiceSpec, warnings)
    dr = _pick(service_name, destination_rules, DestinationRuleSpec, warnings)
    policy = ServicePolicy()
    if dr is not None:
        spec = _spec(dr, DestinationRuleSpec)
        policy = ServicePolicy(subsets=spec.subsets, lb=spec.lb, pool=spec.pool, outlier=spec.outlier)
    routes = policy.routes
    if vs is not None:
        routes = _spec(vs, VirtualServiceSpec).http or routes
        known = {s.name for s in policy.subsets}
        for i, route in enumerate(routes):
            for j, dest in enumerate(route.destinations):
                if dest.subset is not None and dest.subset not in known:
                    warnings.append(
                        f"VirtualService {vs.name}: spec.http[{i}].route[{j}].destination.subset: "
                        f"subset {dest.subset!r} is not defined by any DestinationRule for "
                        f"{service_name}; requests routed there fail with 503")
        if routes[-1].matches:
            routes = (*routes, HttpRoute())  # requests no route matched keep the default behaviour
    return ServicePolicy(routes=routes, subsets=policy.subsets, lb=policy.lb, pool=policy.pool,
                         outlier=policy.outlier, warnings=tuple(warnings))


def _pick(
    service: str, docs: Sequence[ConfigDoc], want: type[T],
    warnings: list[str],
) -> ConfigDoc | None:
    """The oldest document for `service`: Istio leaves merging several undefined, so don't guess."""
    matching = [d for d in docs if service in _hosts(_spec(d, want))]
    if len(matching) > 1:
        kind = matching[0].kind
        ignored = ", ".join(d.name for d in matching[1:])
        warnings.append(f"{kind}s {', '.join(d.name for d in matching)} all apply to {service}; "
                        f"meshns uses {matching[0].name} (applied first) and ignores {ignored}")
    return matching[0] if matching else None


def _hosts(spec: VirtualServiceSpec | DestinationRuleSpec) -> tuple[str, ...]:
    return spec.hosts if isinstance(spec, VirtualServiceSpec) else (spec.host,)


def _spec(doc: ConfigDoc, want: type[T]) -> T:
    if not isinstance(doc.spec, want):
        raise TypeError(f"{doc.kind} {doc.name} passed where a {want.__name__} was expected")
    return doc.spec
