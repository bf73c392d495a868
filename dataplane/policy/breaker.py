"""Circuit breaker of one service: Envoy's resource limits, not a tripping state machine.

Theory of operation. Envoy's "circuit breaker" is three counters with ceilings, checked at the
moment a resource would be taken, per upstream cluster (here: per service, all endpoints together):

    active_requests  requests in flight upstream      ceiling pool.max_requests
    pending          requests waiting for a connection ceiling pool.max_pending_requests
    connections      open upstream connections         ceiling pool.max_connections

A request that would pass a ceiling is not queued: it fails at once with 503 and flag UO, which is
the point (shed load early instead of piling latency onto an overloaded service). There is no
open/half-open/closed state to time out: the breaker "closes" by itself as soon as in-flight work
finishes and the counters drop.

Every successful ``try_*``/``*_opened`` must be paired with its ``end``/``remove``/``closed`` by the
caller. Counters never go negative: an unpaired release is clamped at 0 and counted in
``underflows`` (a proxy bug to look for, but not a reason to crash the data path or to let a
negative count silently raise the effective ceiling).

On reload ``update`` swaps the ceilings and keeps the counters: requests in flight remain in flight.
Lowering a ceiling below the current count only stops new work until the count falls.
"""

from __future__ import annotations

from meshns.snapshot import ConnectionPool


class CircuitBreaker:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.active_requests = 0
        self.pending = 0
        self.connections = 0
        self.overflows = 0  # refusals of try_start_request and try_add_pending
        self.underflows = 0  # releases without a matching take (clamped)

    def update(self, pool: ConnectionPool) -> None:
        self.pool = pool

    # requests

    def try_start_request(self) -> bool:
        if self.active_requests >= self.pool.max_requests:
            self.overflows += 1
            return False
        self.active_requests += 1
        return True

    def end_request(self) -> None:
        self.active_requests = self._dec(self.active_requests)

    # connections

    def can_open_connection(self) -> bool:
        # Not an overflow by itself: the caller queues the request as pending (try_add_pending),
        # and only a full queue is an overflow.
        return self.connections < self.pool.max_connections

    def connection_opened(self) -> None:
        self.connections += 1

    def connection_closed(self) -> None:
        self.connections = self._dec(self.connections)

    # requests waiting for a connection

    def try_add_pending(self) -> bool:
        if self.pending >= self.pool.max_pending_requests:
            self.overflows += 1
            return False
        self.pending += 1
        return True

    def remove_pending(self) -> None:
        self.pending = self._dec(self.pending)

    def _dec(self, value: int) -> int:
        if value <= 0:
            self.underflows += 1
            return 0
        return value - 1
