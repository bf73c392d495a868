"""CircuitBreaker: ceilings, overflow counting, reloads, counters never negative."""

from __future__ import annotations

from meshns.dataplane.policy.breaker import CircuitBreaker
from meshns.snapshot import ConnectionPool


def test_request_limit_and_overflow() -> None:
    b = CircuitBreaker(ConnectionPool(max_requests=2))
    assert [b.try_start_request() for _ in range(3)] == [True, True, False]
    assert (b.active_requests, b.overflows) == (2, 1)
    b.end_request()
    assert b.try_start_request()
    assert b.active_requests == 2


def test_connection_limit() -> None:
    b = CircuitBreaker(ConnectionPool(max_connections=1))
    assert b.can_open_connection()
    b.connection_opened()
    assert not b.can_open_connection()
    assert b.overflows == 0  # asking is not an overflow
    b.connection_closed()
    assert b.can_open_connection()


def test_pending_limit() -> None:
    b = CircuitBreaker(ConnectionPool(max_pending_requests=1))
    assert b.try_add_pending()
    assert not b.try_add_pending()
    assert (b.pending, b.overflows) == (1, 1)
    b.remove_pending()
    assert b.try_add_pending()


def test_zero_limits_refuse_everything() -> None:
    b = CircuitBreaker(ConnectionPool(max_connections=0, max_pending_requests=0, max_requests=0))
    assert not b.try_start_request()
    assert not b.try_add_pending()
    assert not b.can_open_connection()
    assert b.overflows == 2


def test_counters_never_negative() -> None:
    b = CircuitBreaker(ConnectionPool())
    b.end_request()
    b.remove_pending()
    b.connection_closed()
    assert (b.active_requests, b.pending, b.connections) == (0, 0, 0)
    assert b.underflows == 3
    # an unpaired release must not raise the effective ceiling
    b.update(ConnectionPool(max_requests=1))
    assert b.try_start_request()
    assert not b.try_start_request()


def test_update_keeps_counters() -> None:
    b = CircuitBreaker(ConnectionPool(max_requests=10))
    for _ in range(5):
        assert b.try_start_request()
    b.connection_opened()
    b.update(ConnectionPool(max_requests=3))
    assert (b.active_requests, b.connections) == (5, 1)
    assert not b.try_start_request()  # above the new ceiling until in-flight work ends
    for _ in range(3):
        b.end_request()
    assert b.try_start_request()
