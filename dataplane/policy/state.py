"""Per-service policy state that must outlive snapshot reloads.

A snapshot is immutable and replaced wholesale, but the balancer cursor, the breaker counters of
requests in flight and the outlier history belong to the running proxy, not to the config. So they
live here, keyed by service name, and a reload only re-points their policies (``sync``) and drops
what belongs to endpoints that are gone.
"""

from __future__ import annotations

from collections.abc import Callable

from meshns.dataplane.policy.balance import Balancer
from meshns.dataplane.policy.breaker import CircuitBreaker
from meshns.dataplane.policy.outlier import OutlierDetector, healthy
from meshns.dataplane.policy.retry import budget_allows
from meshns.snapshot import Endpoint, Service


class ServiceState:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.balancer = Balancer(service.lb)
        self.breaker = CircuitBreaker(service.pool)
        self.outlier = OutlierDetector(service.outlier)
        self.active: dict[str, int] = {}  # endpoint ip -> tries in flight to it
        self.active_requests = 0  # downstream requests in flight (the retry budget's base)
        self.active_retries = 0  # retries in flight
        self.requests = 0
        self.retries = 0
        self.overflows = 0
        self.ejections = 0
        self.timeouts = 0
        self.budget_exhausted = 0  # retries that were due but refused by the retry budget

    def sync(self, service: Service) -> None:
        """Take the policies of a reloaded ``service``, keep the counters, forget gone endpoints."""
        self.service = service
        self.balancer.set_policy(service.lb)
        self.breaker.update(service.pool)
        self.outlier.update(service.outlier)
        ips = {e.ip for e in service.endpoints}
        self.outlier.forget(ips)
        # Tries in flight to a removed endpoint still end later; keep their counts until they do.
        for ip in [ip for ip, n in self.active.items() if ip not in ips and n <= 0]:
            del self.active[ip]

    # Helpers keeping ``active`` consistent; the proxy may also update the fields directly.

    def try_started(self, ip: str) -> None:
        self.active[ip] = self.active.get(ip, 0) + 1

    def try_ended(self, ip: str) -> None:
        n = self.active.get(ip, 0) - 1
        if n > 0:
            self.active[ip] = n
        else:
            self.active.pop(ip, None)

    def budget_ok(self) -> bool:
        return budget_allows(self.service.budget, self.active_requests, self.active_retries)


class ServiceStates:
    def __init__(self) -> None:
        self._by_name: dict[str, ServiceState] = {}

    def get(self, service: Service) -> ServiceState:
        st = self._by_name.get(service.name)
        if st is None:
            st = self._by_name[service.name] = ServiceState(service)
        elif st.service is not service:
            # Identity first: on the request path the object is the one of the current snapshot
            # and this is one comparison. A new object means a reload; syncing is cheap and
            # idempotent, so no deep equality check is needed (it would cost about as much).
            st.sync(service)
        return st

    def prune(self, names: set[str]) -> None:
        """Drop the state of services not in ``names`` (no longer in the snapshot)."""
        for name in [n for n in self._by_name if n not in names]:
            del self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)


def choose_endpoint(
    service: Service,
    state: ServiceState,
    subset: str | None,
    exclude: set[str],
    now: float,
    rand: Callable[[], float],
    prefer: str | None = None,
) -> Endpoint | None:
    """Subset endpoints, minus those already tried (unless none would remain: retrying the same
    endpoint beats failing), minus the ejected (unless all are: panic mode), then the balancer.

    ``prefer`` is an endpoint the balancer already picked for this client connection (its eager
    dial): taken when it is still a healthy candidate, so the dialled connection is used rather
    than left idle at the server (where it would block a one-connection-at-a-time app)."""
    candidates: list[Endpoint] | tuple[Endpoint, ...] = service.subset_endpoints(subset)
    if exclude:
        untried = [e for e in candidates if e.ip not in exclude]
        if untried:
            candidates = untried
    usable = healthy(candidates, state.outlier, now)
    if prefer is not None:
        for ep in usable:
            if ep.ip == prefer:
                return ep
    return state.balancer.pick(usable, state.active, rand)
