"""The keep-alive pool's idle timeout: one timer per connection per idle period (not one per
request), which still closes a connection exactly at its last release's deadline. Driven by a
fake loop whose clock and timers the test moves by hand."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from meshns.dataplane.http1.upstream import ServicePool, UpstreamConn, idle_left_s

KEY = ("10.0.0.1", 80)


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self._when, self.callback, self.args, self.cancelled = when, callback, args, False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> FakeHandle:
        h = FakeHandle(self.now + delay, callback, args)
        self.timers.append(h)
        return h

    def armed(self) -> list[FakeHandle]:
        return [h for h in self.timers if not h.cancelled]

    def run_until(self, t: float) -> None:
        """Fire every live timer due by ``t``, in order, the clock at each one's time."""
        while True:
            due = sorted((h for h in self.armed() if h.when() <= t), key=FakeHandle.when)
            if not due:
                break
            h = due[0]
            self.timers.remove(h)
            self.now = h.when()
            h.callback(*h.args)
        self.now = t


class FakeTransport:
    def __init__(self) -> None:
        self.closed = 0

    def is_closing(self) -> bool:
        return self.closed > 0

    def close(self) -> None:
        self.closed += 1

    def abort(self) -> None:
        self.closed += 1

    def resume_reading(self) -> None:
        pass


def make_pool(idle_timeout_s: float = 10.0) -> tuple[ServicePool, FakeLoop]:
    pool_cfg = SimpleNamespace(idle_timeout_s=idle_timeout_s, max_requests_per_connection=0, max_connections=100)
    breaker = SimpleNamespace(connections=1, connection_closed=lambda: None)
    state = SimpleNamespace(service=SimpleNamespace(pool=pool_cfg), breaker=breaker)
    pool = ServicePool(cast(Any, state), cast(Any, None))
    loop = FakeLoop()
    pool.loop = cast(Any, loop)
    return pool, loop


def make_conn(pool: ServicePool) -> tuple[UpstreamConn, FakeTransport]:
    conn = UpstreamConn(pool, KEY)
    transport = FakeTransport()
    conn.transport = cast(Any, transport)
    return conn, transport


def test_idle_left() -> None:
    assert idle_left_s(10.0, 4.0) == 6.0
    assert idle_left_s(10.0, 10.0) == 0.0
    assert idle_left_s(10.0, 11.0) < 0


def test_idle_connection_closes_at_its_deadline() -> None:
    pool, loop = make_pool()
    conn, tr = make_conn(pool)
    pool.release(conn, True)
    loop.run_until(9.9)
    assert tr.closed == 0 and pool.idle_count() == 1
    loop.run_until(10.0)
    assert tr.closed == 1 and pool.idle_count() == 0 and conn.idle_handle is None


def test_reuse_keeps_one_timer_and_moves_the_deadline() -> None:
    pool, loop = make_pool()
    conn, tr = make_conn(pool)
    pool.release(conn, True)  # deadline 10
    for t in (1.0, 2.0, 3.0):
        loop.run_until(t)
        assert pool.take_idle(KEY) is conn
        pool.release(conn, True)  # deadline t + 10
    assert len(loop.armed()) == 1  # not one per request
    loop.run_until(12.9)  # the first timer fired at 10 and re-armed for the rest
    assert tr.closed == 0 and pool.idle_count() == 1
    loop.run_until(13.0)
    assert tr.closed == 1 and pool.idle_count() == 0


def test_timer_firing_while_in_use_leaves_the_connection_alone() -> None:
    pool, loop = make_pool()
    conn, tr = make_conn(pool)
    pool.release(conn, True)
    loop.run_until(5.0)
    assert pool.take_idle(KEY) is conn
    loop.run_until(30.0)  # in use the whole time
    assert tr.closed == 0 and conn.idle_handle is None
    pool.release(conn, True)  # idle again from 30: a fresh period
    loop.run_until(39.9)
    assert tr.closed == 0
    loop.run_until(40.0)
    assert tr.closed == 1


def test_shorter_timeout_after_reload_is_not_outlived_by_an_older_timer() -> None:
    pool, loop = make_pool(idle_timeout_s=10.0)
    conn, tr = make_conn(pool)
    pool.release(conn, True)  # timer at 10
    assert pool.take_idle(KEY) is conn
    pool.state.service.pool.idle_timeout_s = 2.0  # type: ignore[misc]
    loop.run_until(1.0)
    pool.release(conn, True)  # deadline 3, before the armed timer: re-armed
    assert [h.when() for h in loop.armed()] == [3.0]
    loop.run_until(3.0)
    assert tr.closed == 1


def test_closed_connection_cancels_its_timer_and_leaves_the_pool() -> None:
    pool, loop = make_pool()
    conn, tr = make_conn(pool)
    pool.release(conn, True)
    pool.close(conn)
    assert not loop.armed() and pool.idle_count() == 0 and tr.closed == 1
    # a connection lost while in use (its timer still armed from an earlier release)
    conn2, _ = make_conn(pool)
    pool.release(conn2, True)
    assert pool.take_idle(KEY) is conn2
    pool.drop(conn2)
    assert not loop.armed() and conn2.idle_handle is None
