"""OutlierDetector with injected time: ejection, reset, growth, cap, max percent, panic, disabled."""

from __future__ import annotations

import pytest

from meshns.dataplane.policy.outlier import OutlierDetector, healthy, is_failure
from meshns.dataplane.policy.retry import Outcome
from meshns.snapshot import Endpoint, OutlierDetection

POLICY = OutlierDetection(consecutive_5xx=3, interval_s=10.0, base_ejection_s=30.0,
                          max_ejection_s=100.0, max_ejection_percent=10.0)
A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"


def fail(d: OutlierDetector, ip: str, n: int, now: float, total: int = 10) -> list[bool]:
    return [d.record(ip, True, now, total) for _ in range(n)]


@pytest.mark.parametrize(
    ("outcome", "want"),
    [
        (Outcome.status(200), False),
        (Outcome.status(404), False),
        (Outcome.status(499), False),
        (Outcome.status(500), True),
        (Outcome.status(503), True),
        (Outcome.status(599), True),
        (Outcome.status(200, grpc_status=14), False),
        (Outcome.connect_failure(), True),
        (Outcome.refused(), True),
        (Outcome.reset(), True),
        (Outcome.reset(reused_connection=True), True),
        (Outcome.timeout(), True),
        (Outcome.protocol_error(), True),  # a response that is not HTTP: a gateway error (502)
    ],
)
def test_is_failure(outcome: Outcome, want: bool) -> None:
    assert is_failure(outcome) is want


def test_ejects_after_n_consecutive() -> None:
    d = OutlierDetector(POLICY)
    assert fail(d, A, 3, now=0.0) == [False, False, True]
    assert d.is_ejected(A, 0.0)
    assert d.ejected(1.0) == {A}
    assert d.is_ejected(A, 29.9)
    assert not d.is_ejected(A, 30.0)
    assert d.ejected(30.0) == set()
    assert d.ejections == 1


def test_success_resets_consecutive() -> None:
    d = OutlierDetector(POLICY)
    fail(d, A, 2, now=0.0)
    assert not d.record(A, False, 0.0, 10)
    assert fail(d, A, 2, now=0.0) == [False, False]
    assert not d.is_ejected(A, 0.0)
    assert fail(d, A, 1, now=0.0) == [True]


def test_results_while_ejected_are_ignored() -> None:
    d = OutlierDetector(POLICY)
    fail(d, A, 3, now=0.0)
    assert fail(d, A, 10, now=5.0) == [False] * 10
    assert d.times_ejected(A) == 1
    assert not d.is_ejected(A, 30.0)  # the ejection was not extended


def test_ejection_time_grows_and_is_capped() -> None:
    d = OutlierDetector(POLICY)
    now, lengths = 0.0, []
    for _ in range(5):
        assert fail(d, A, 3, now)[-1]
        start = now
        while d.is_ejected(A, now):
            now += 1.0
        lengths.append(now - start)
    assert lengths == [30.0, 60.0, 90.0, 100.0, 100.0]  # base x times, capped at max


def test_returns_with_fresh_count() -> None:
    d = OutlierDetector(POLICY)
    fail(d, A, 3, now=0.0)
    assert fail(d, A, 2, now=30.0) == [False, False]  # back: needs the full N again
    assert fail(d, A, 1, now=30.0) == [True]


def test_multiplier_decays_while_healthy() -> None:
    d = OutlierDetector(POLICY)
    fail(d, A, 3, now=0.0)  # out 0..30, times 1
    fail(d, A, 3, now=30.0)  # out 30..90, times 2
    assert d.times_ejected(A) == 2
    # healthy from 90 for 15 s: one full interval, multiplier 2 -> 1
    assert not d.record(A, False, 105.0, 10)
    assert d.times_ejected(A) == 1
    # healthy long enough: back to 0, so the next ejection is the base time
    assert not d.record(A, False, 500.0, 10)
    assert d.times_ejected(A) == 0
    fail(d, A, 3, now=500.0)
    assert d.is_ejected(A, 529.0) and not d.is_ejected(A, 530.0)


@pytest.mark.parametrize(
    ("percent", "total", "ejectable"),
    [
        (10.0, 3, 1),  # 10% of 3 < 1: at least one may always be ejected
        (10.0, 10, 1),
        (10.0, 30, 3),
        (50.0, 4, 2),
        (100.0, 3, 3),
        (0.0, 5, 1),
    ],
)
def test_max_ejection_percent(percent: float, total: int, ejectable: int) -> None:
    d = OutlierDetector(OutlierDetection(consecutive_5xx=1, max_ejection_percent=percent))
    ips = [f"10.0.1.{i}" for i in range(total)]
    ejected = [d.record(ip, True, 0.0, total) for ip in ips]
    assert sum(ejected) == ejectable
    assert len(d.ejected(0.0)) == ejectable


def test_refused_ejection_retries_when_room_frees() -> None:
    d = OutlierDetector(POLICY)  # 10% of 3 -> 1 at a time
    assert fail(d, A, 3, now=0.0, total=3)[-1]
    assert fail(d, B, 3, now=0.0, total=3) == [False, False, False]  # cap reached
    assert not d.is_ejected(B, 1.0)
    # A returns at 30; B's next error ejects it at once (count stayed at the threshold)
    assert d.record(B, True, 31.0, 3)
    assert d.ejected(31.0) == {B}


def test_healthy_and_panic_mode() -> None:
    eps = [Endpoint("a", A), Endpoint("b", B), Endpoint("c", C)]
    d = OutlierDetector(OutlierDetection(consecutive_5xx=1, max_ejection_percent=100.0))
    assert healthy(eps, d, 0.0) == eps
    d.record(A, True, 0.0, 3)
    assert healthy(eps, d, 1.0) == eps[1:]
    d.record(B, True, 0.0, 3)
    d.record(C, True, 0.0, 3)
    assert healthy(eps, d, 1.0) == eps  # all ejected: panic, use them all
    assert healthy(eps[:1], d, 1.0) == eps[:1]
    assert healthy([], d, 1.0) == []


@pytest.mark.parametrize(
    "policy",
    [OutlierDetection(enabled=False, consecutive_5xx=1), OutlierDetection(consecutive_5xx=0)],
)
def test_disabled_never_ejects(policy: OutlierDetection) -> None:
    d = OutlierDetector(policy)
    assert not any(fail(d, A, 50, now=0.0))
    assert not d.is_ejected(A, 0.0)
    assert d.ejected(0.0) == set()


def test_disabling_on_update_returns_everyone() -> None:
    d = OutlierDetector(POLICY)
    fail(d, A, 3, now=0.0)
    d.update(OutlierDetection(enabled=False))
    assert not d.is_ejected(A, 1.0)
    d.update(POLICY)
    assert d.times_ejected(A) == 0


def test_update_keeps_state_and_forget_drops_it() -> None:
    d = OutlierDetector(POLICY)
    fail(d, A, 3, now=0.0)
    fail(d, B, 2, now=0.0)
    d.update(OutlierDetection(consecutive_5xx=3, base_ejection_s=5.0))
    assert d.is_ejected(A, 10.0)  # the running ejection keeps its end time
    assert d.record(B, True, 0.0, 10) is False  # 10% of 10 = 1 already ejected (A)
    d.forget({B})
    assert not d.is_ejected(A, 10.0)
    assert d.times_ejected(A) == 0
    assert d.record(B, True, 0.0, 10)  # room again: B's count was kept
