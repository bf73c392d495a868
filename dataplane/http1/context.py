"""What every HTTP-aware connection of one sidecar shares: snapshot store, per-service policy
state and pools, the parser choice, the one random source, and the counters."""

from __future__ import annotations

import random
from typing import Protocol

from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.connect import Connector
from meshns.dataplane.http1.parser import ParserKit
from meshns.dataplane.http1.upstream import ServicePool
from meshns.dataplane.observe import Observer
from meshns.dataplane.policy.state import ServiceState, ServiceStates
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.stats import Stats
from meshns.snapshot import Service


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
        self.live: set[LiveConn] = set()
        self.obs = obs
        self.draining = False

    def policy(self, service: Service) -> tuple[ServiceState, ServicePool]:
        state = self.states.get(service)
        pool = self.pools.get(service.name)
        if pool is None or pool.state is not state:
            pool = self.pools[service.name] = ServicePool(state, self.connector)
        return state, pool

    def services_doc(self) -> dict[str, object]:
        doc: dict[str, object] = {}
        for name, pool in self.pools.items():
            st = pool.state
            doc[name] = {
                "requests": st.requests, "retries": st.retries, "overflows": st.overflows,
                "budget_exhausted": st.budget_exhausted,
                "timeouts": st.timeouts, "ejections": st.ejections,
                "active_requests": st.active_requests, "active_retries": st.active_retries,
                "connections": st.breaker.connections, "pending": st.breaker.pending,
                "idle_connections": pool.idle_count(),
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
