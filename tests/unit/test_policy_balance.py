"""Balancer: P2C, round robin and random, with scripted random draws."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable

import pytest

from meshns.dataplane.policy.balance import Balancer
from meshns.snapshot import Endpoint

E = [Endpoint(f"p{i}", f"10.0.0.{i}") for i in range(1, 5)]  # .1 .2 .3 .4


def draws(*values: float) -> Callable[[], float]:
    it = iter(values)
    return lambda: next(it)


def cycle(values: Iterable[float]) -> Callable[[], float]:
    it = itertools.cycle(values)
    return lambda: next(it)


@pytest.mark.parametrize("policy", ["least_request", "round_robin", "random"])
def test_empty_is_none_and_single_is_it(policy: str) -> None:
    b = Balancer(policy)  # type: ignore[arg-type]
    assert b.pick([], {}, draws()) is None
    assert b.pick([E[2]], {"10.0.0.3": 99}, draws()) is E[2]


@pytest.mark.parametrize(
    ("active", "rs", "want"),
    [
        # draws pick index 0 then index 1 of the others: E0 vs E1
        ({"10.0.0.1": 5, "10.0.0.2": 1}, (0.0, 0.0), 1),
        ({"10.0.0.1": 1, "10.0.0.2": 5}, (0.0, 0.0), 0),
        ({"10.0.0.1": 2, "10.0.0.2": 2}, (0.0, 0.0), 0),  # tie: the first drawn
        ({"10.0.0.1": 2, "10.0.0.4": 2}, (0.99, 0.0), 3),  # tie: first drawn is E3
        ({}, (0.5, 0.5), 2),  # missing = 0; E2 first drawn, tie
        # second draw skips the first index: i=2, j=int(0.7*3)=2 -> 3
        ({"10.0.0.3": 3, "10.0.0.4": 0}, (0.5, 0.7), 3),
        ({"10.0.0.3": 0, "10.0.0.4": 3}, (0.5, 0.7), 2),
        ({"10.0.0.1": 10, "10.0.0.2": 10, "10.0.0.3": 10}, (0.0, 0.99), 3),
    ],
)
def test_p2c_table(active: dict[str, int], rs: tuple[float, float], want: int) -> None:
    assert Balancer("least_request").pick(E, active, draws(*rs)) is E[want]


def test_p2c_two_draws_always_distinct() -> None:
    b = Balancer("least_request")
    seen: set[tuple[str, str]] = set()
    grid = [i / 10 for i in range(10)]
    for r1, r2 in itertools.product(grid, grid):
        # tie on load: winner is the first drawn; load the first to see the second
        first = E[min(3, int(r1 * 4))]
        got = b.pick(E, {first.ip: 1}, draws(r1, r2))
        assert got is not None and got is not first
        seen.add((first.ip, got.ip))
    assert len(seen) == 12  # every ordered pair of distinct endpoints occurs


def test_p2c_prefers_less_loaded_statistically() -> None:
    rng = random.Random(7)
    active = {"10.0.0.1": 0, "10.0.0.2": 10, "10.0.0.3": 10, "10.0.0.4": 10}
    b = Balancer("least_request")
    counts = Counter(getattr(b.pick(E, active, rng.random), "ip", None) for _ in range(4000))
    # the idle one wins every pair it is in: 1/2 of picks (in 6 of 12 ordered pairs)
    assert 1800 < counts["10.0.0.1"] < 2200


def test_round_robin_rotates() -> None:
    b = Balancer("round_robin")
    got = [b.pick(E, {}, draws()) for _ in range(9)]
    assert [e.ip[-1] for e in got if e] == list("123412341")


def test_round_robin_survives_rebuilt_and_reordered_lists() -> None:
    b = Balancer("round_robin")
    seq = []
    for i in range(8):
        cands = list(reversed(E)) if i % 2 else list(E)  # rebuilt per request, any order
        e = b.pick(cands, {}, draws())
        assert e is not None
        seq.append(e.ip[-1])
    assert seq == list("12341234")


def test_round_robin_skips_excluded_and_continues() -> None:
    b = Balancer("round_robin")
    assert b.pick(E, {}, draws()) is E[0]
    assert b.pick([E[0], E[2], E[3]], {}, draws()) is E[2]  # .2 excluded: next after .1 is .3
    assert b.pick(E, {}, draws()) is E[3]
    assert b.pick(E, {}, draws()) is E[0]  # wraps


def test_random_is_uniform_over_grid() -> None:
    b = Balancer("random")
    counts = Counter(b.pick(E, {}, draws(i / 100)).ip for i in range(100))  # type: ignore[union-attr]
    assert set(counts.values()) == {25}
    assert b.pick(E, {}, draws(1.0)) is E[3]  # clamped


def test_set_policy_changes_behaviour() -> None:
    b = Balancer("random")
    b.set_policy("round_robin")
    assert [b.pick(E, {}, cycle([0.9])) for _ in range(2)] == [E[0], E[1]]
