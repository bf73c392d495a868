"""FloodGuard: each limit, the two-bucket sliding window, tripping for good, independent kinds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshns.dataplane.http2.guard import FloodGuard, GuardLimits

Kind = Callable[[FloodGuard], "str | None"]


class Clock:
    """A settable monotonic clock; starts at an arbitrary non-zero time like the real one."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _opened(g: FloodGuard) -> str | None:
    return g.stream_opened()


def _reset(g: FloodGuard) -> str | None:
    return g.premature_reset()


def _settings(g: FloodGuard) -> str | None:
    return g.settings_received()


def _ping(g: FloodGuard) -> str | None:
    return g.ping_received()


DEFAULTS = GuardLimits()
# (event, its limit under the defaults, the reason when the limit is passed within one window)
KINDS: list[tuple[Kind, int, str]] = [
    (_opened, 2000, "stream churn: 2001 streams opened within 1.0 s (limit 2000)"),
    (_reset, 100, "rapid reset: 101 streams reset by the client within 1.0 s (limit 100)"),
    (_settings, 50, "SETTINGS flood: 51 SETTINGS frames within 1.0 s (limit 50)"),
    (_ping, 50, "PING flood: 51 PING frames within 1.0 s (limit 50)"),
]
KIND_IDS = ["streams", "resets", "settings", "pings"]
LIMIT_FIELD: dict[Kind, str] = {
    _opened: "max_streams_opened",
    _reset: "max_premature_resets",
    _settings: "max_settings",
    _ping: "max_pings",
}


def test_defaults() -> None:
    want = GuardLimits(window_s=1.0, max_premature_resets=100, max_settings=50, max_pings=50, max_streams_opened=2000)
    assert want == DEFAULTS


@pytest.mark.parametrize(("event", "limit", "reason"), KINDS, ids=KIND_IDS)
def test_trips_above_the_limit_not_at_it(event: Kind, limit: int, reason: str) -> None:
    clock = Clock()
    g = FloodGuard(DEFAULTS, clock)
    for i in range(limit):
        clock.t = 1000.0 + 0.9 * i / limit  # all within the first window
        assert event(g) is None
    assert g.tripped is None
    assert event(g) == reason
    assert g.tripped == reason


@pytest.mark.parametrize(("event", "limit", "reason"), KINDS, ids=KIND_IDS)
def test_once_tripped_always_tripped(event: Kind, limit: int, reason: str) -> None:
    clock = Clock()
    g = FloodGuard(DEFAULTS, clock)
    for _ in range(limit + 1):
        event(g)
    assert g.tripped == reason
    clock.t += 3600.0  # long quiet: the counts would be empty again, the verdict is not
    for other, _, _ in KINDS:
        assert other(g) == reason  # every kind answers with the first reason
    assert g.tripped == reason


@pytest.mark.parametrize(
    ("field", "event", "limit", "want"),
    [
        ("max_premature_resets", _reset, 0, "rapid reset: 1 streams reset by the client within 1.0 s (limit 0)"),
        ("max_premature_resets", _reset, 1, "rapid reset: 2 streams reset by the client within 1.0 s (limit 1)"),
        ("max_settings", _settings, 3, "SETTINGS flood: 4 SETTINGS frames within 1.0 s (limit 3)"),
        ("max_pings", _ping, 7, "PING flood: 8 PING frames within 1.0 s (limit 7)"),
        ("max_streams_opened", _opened, 10, "stream churn: 11 streams opened within 1.0 s (limit 10)"),
    ],
)
def test_custom_limits(field: str, event: Kind, limit: int, want: str) -> None:
    g = FloodGuard(GuardLimits(**{field: limit}), Clock())
    assert [event(g) for _ in range(limit)] == [None] * limit
    assert event(g) == want


def test_window_length_in_reason() -> None:
    g = FloodGuard(GuardLimits(window_s=0.25, max_pings=2), Clock())
    assert [g.ping_received() for _ in range(3)] == [None, None, "PING flood: 3 PING frames within 0.25 s (limit 2)"]


@pytest.mark.parametrize(("event", "limit", "reason"), KINDS, ids=KIND_IDS)
def test_kinds_are_independent(event: Kind, limit: int, reason: str) -> None:
    g = FloodGuard(DEFAULTS, Clock())
    # Every kind filled to exactly its limit in the same window: nothing trips, the counts do not mix.
    for e, n, _ in KINDS:
        for _ in range(n):
            assert e(g) is None
    assert g.tripped is None
    assert event(g) == reason  # one more of any one kind trips that kind, with its own reason


# --- the sliding window: two buckets, the previous one weighted by the remaining overlap ---------


@pytest.mark.parametrize(
    ("second_at", "allowed"),
    [
        (0.0, 0),  # same bucket: the limit is used up
        (0.5, 0),
        (1.0, 0),  # next bucket starts: the previous still weighs fully
        (1.25, 25),  # 100 * 0.25 has slid out
        (1.5, 50),
        (1.9, 90),
        (2.0, 100),  # the first bucket is out of the window
        (2.5, 100),
        (7.3, 100),  # long idle: both buckets are stale
    ],
)
def test_window_slides(second_at: float, allowed: int) -> None:
    """100 resets at the start of the first window; how many more pass at ``second_at``."""
    clock = Clock()
    g = FloodGuard(GuardLimits(max_premature_resets=100), clock)
    for _ in range(100):
        assert g.premature_reset() is None
    clock.t = 1000.0 + second_at
    for i in range(allowed):
        assert g.premature_reset() is None, i
    assert g.premature_reset() is not None


def test_events_spread_across_two_windows() -> None:
    """60 at the end of one bucket and 60 early in the next: 120 within 1 s trips, as it should."""
    clock = Clock()
    g = FloodGuard(GuardLimits(max_premature_resets=100), clock)
    clock.t = 1000.9
    for _ in range(60):
        assert g.premature_reset() is None
    clock.t = 1001.1  # estimate = 60 * 0.9 + n: the 47th exceeds 100
    got = [g.premature_reset() for _ in range(47)]
    assert got[:46] == [None] * 46
    assert got[46] == "rapid reset: 101 streams reset by the client within 1.0 s (limit 100)"


def test_spread_across_two_windows_below_the_limit() -> None:
    """50 late in one bucket and 50 early in the next: 100 within 1 s is at the limit, not above."""
    clock = Clock()
    g = FloodGuard(GuardLimits(max_settings=100), clock)
    clock.t = 1000.8
    assert [g.settings_received() for _ in range(50)] == [None] * 50
    clock.t = 1001.2
    assert [g.settings_received() for _ in range(50)] == [None] * 50
    assert g.tripped is None


def test_clock_going_backwards_keeps_the_bucket() -> None:
    clock = Clock()
    g = FloodGuard(GuardLimits(max_pings=10), clock)
    clock.t = 1001.5
    assert [g.ping_received() for _ in range(10)] == [None] * 10
    clock.t = 1000.2  # an older bucket: counted in the current one, not a fresh start
    assert g.ping_received() is not None


@pytest.mark.parametrize("window_s", [1.0, 0.5, 10.0])
@pytest.mark.parametrize(("event", "limit", "reason"), KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("phase", [0.0, 0.37])
def test_legitimate_rate_never_trips(event: Kind, limit: int, reason: str, window_s: float, phase: float) -> None:
    """10 windows at 90% of the limit each, evenly spaced, with the buckets at any phase."""
    limits = GuardLimits(window_s=window_s, **{LIMIT_FIELD[event]: limit})
    clock = Clock()
    g = FloodGuard(limits, clock)
    per_window = limit * 9 // 10
    for i in range(10 * per_window):
        clock.t = 1000.0 + window_s * (phase + i / per_window)
        assert event(g) is None, (i, reason)
    assert g.tripped is None


@pytest.mark.parametrize("limit", [20, 50, 100, 2000])
def test_sustained_rate_above_the_limit_trips(limit: int) -> None:
    """The counterpart: 110% of the limit, evenly spread, trips within the second window."""
    clock = Clock()
    g = FloodGuard(GuardLimits(max_premature_resets=limit), clock)
    per_window = limit * 11 // 10
    for i in range(2 * per_window):
        clock.t = 1000.0 + i / per_window
        if g.premature_reset() is not None:
            break
    assert g.tripped is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_s": 0.0},
        {"window_s": -1.0},
        {"window_s": float("inf")},
        {"window_s": float("nan")},
        {"max_premature_resets": -1},
        {"max_settings": -1},
        {"max_pings": -1},
        {"max_streams_opened": -1},
    ],
)
def test_invalid_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"window_s|must not be negative"):
        GuardLimits(**kwargs)  # type: ignore[arg-type]  # a float where an int is declared, on purpose


def test_constant_memory() -> None:
    g = FloodGuard(GuardLimits(max_streams_opened=10**9), Clock())
    for _ in range(10_000):
        g.stream_opened()
    assert not hasattr(g, "__dict__")  # slots only: nothing grows with the number of events
