"""What every HTTP-aware connection of one sidecar shares: snapshot store, per-service policy
state and pools, the parser choice, the one random source, and the counters."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.connect import Connector
from meshns.dataplane.decide import Forward
from meshns.dataplane.http1.parser import ParserKit
from meshns.dataplane.http1.upstream import ServicePool
from meshns.dataplane.observe import Observer
from meshns.dataplane.policy.state import ServiceState, ServiceStates
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.stats import Stats
from meshns.snapshot import Service

if TYPE_CHECKING:
    from meshns.dataplane.http2.client import H2Pool


class LiveConn(Protocol):
    """An HTTP-aware client connection (outbound service or inbound), as drain sees it."""

    def close_if_idle(self) -> None: ...

    def abort(self) -> None: ...

    def buffered_bytes(self) -> int: ...


class HttpContext:
    def __init__(self, config: SidecarConfig, stats: Stats, store: SnapshotStore, connector: Connector,
                 kit: ParserKit, rng: random.Random, obs: Observer) -> None:
        self.config = config
        self.stats = stats
        self.store = store
        self.connector = connector
        self.kit = kit
        self.rng = rng
        self.rand = rng.random  # pre-bound: the policy functions take a () -> float
        self.states = ServiceStates()
        self.pools: dict[str, ServicePool] = {}
        self.h2_pools: dict[str, H2Pool] = {}  # per service (outbound), HTTP/2 upstreams
        self.h2_app_pools: dict[tuple[str, int], H2Pool] = {}  # per app address (inbound)
        self.live: set[LiveConn] = set()
        self.obs = obs
        self.draining = False

    def policy(self, service: Service) -> tuple[ServiceState, ServicePool]:
        state = self.states.get(service)
        pool = self.pools.get(service.name)
        if pool is None or pool.state is not state:
            pool = self.pools[service.name] = ServicePool(state, self.connector)
        return state, pool

    def h2_pool(self, service: Service) -> H2Pool:
        pool = self.h2_pools.get(service.name)
        if pool is None:
            from meshns.dataplane.http2.client import H2Pool  # noqa: PLC0415  (h2 only when used)

            p = service.pool
            pool = self.h2_pools[service.name] = H2Pool(self.connector, p.connect_timeout_s, p.idle_timeout_s)
        return pool

    def h2_app_pool(self, fwd: Forward) -> H2Pool:
        key = fwd.target.as_tuple()
        pool = self.h2_app_pools.get(key)
        if pool is None:
            from meshns.dataplane.http2.client import H2Pool  # noqa: PLC0415  (h2 only when used)

            pool = self.h2_app_pools[key] = H2Pool(self.connector, self.config.connect_timeout_s,
                                                   self.config.idle_timeout_s, fwd.bind_source)
        return pool

    def services_doc(self) -> dict[str, object]:
        doc: dict[str, object] = {}
        for name, pool in self.pools.items():
            st = pool.state
            h2 = self.h2_pools.get(name)
            doc[name] = {
                "requests": st.requests, "retries": st.retries, "overflows": st.overflows,
                "budget_exhausted": st.budget_exhausted,
                "timeouts": st.timeouts, "ejections": st.ejections,
                "active_requests": st.active_requests, "active_retries": st.active_retries,
                "connections": st.breaker.connections, "pending": st.breaker.pending,
                "idle_connections": pool.idle_count(),
                "h2_connections": h2.connection_count() if h2 is not None else 0,
            }
        return doc

    def buffered_bytes(self) -> int:
        return sum(c.buffered_bytes() for c in self.live)

    def start_drain(self) -> None:
        self.draining = True
        for c in list(self.live):
            c.close_if_idle()

    def abort_all(self) -> None:
        for c in list(self.live):
            c.abort()
