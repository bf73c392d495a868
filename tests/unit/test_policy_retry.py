"""Retry eligibility, replay rules, budget and backoff as tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshns.dataplane.policy.attempts import Attempts
from meshns.dataplane.policy.retry import (
    IDEMPOTENT_METHODS,
    REPLAY_LIMIT_BYTES,
    Outcome,
    backoff_s,
    budget_allows,
    request_replayable,
    retryable,
    should_retry,
)
from meshns.snapshot import RetryBudget, RetryPolicy

CF = Outcome.connect_failure()
REF = Outcome.refused()
RST = Outcome.reset()
RST_REUSED = Outcome.reset(reused_connection=True)
UPE = Outcome.protocol_error()  # the upstream answered with something that is not HTTP
TO = Outcome.timeout()
S200, S404, S409 = Outcome.status(200), Outcome.status(404), Outcome.status(409)
S500, S502, S503, S504 = (Outcome.status(c) for c in (500, 502, 503, 504))
G_CANCEL = Outcome.status(200, grpc_status=1)
G_DEADLINE = Outcome.status(200, grpc_status=4)
G_EXHAUSTED = Outcome.status(200, grpc_status=8)
G_INTERNAL = Outcome.status(200, grpc_status=13)
G_UNAVAIL = Outcome.status(200, grpc_status=14)
G_OK = Outcome.status(200, grpc_status=0)

ALL = {
    "CF": CF, "REF": REF, "RST": RST, "RST_REUSED": RST_REUSED, "UPE": UPE, "TO": TO,
    "200": S200, "404": S404, "409": S409, "500": S500, "502": S502, "503": S503, "504": S504,
    "g1": G_CANCEL, "g4": G_DEADLINE, "g8": G_EXHAUSTED, "g13": G_INTERNAL, "g14": G_UNAVAIL,
    "g0": G_OK,
}

# condition -> the outcomes it retries; every other outcome in ALL must not be retried.
TABLE: dict[str, set[str]] = {
    "5xx": {"CF", "REF", "RST", "RST_REUSED", "UPE", "TO", "500", "502", "503", "504"},
    "gateway-error": {"CF", "REF", "RST", "RST_REUSED", "UPE", "TO", "502", "503", "504"},
    "reset": {"CF", "REF", "RST", "RST_REUSED", "UPE", "TO"},
    "connect-failure": {"CF", "REF"},
    "refused-stream": {"RST_REUSED"},
    "retriable-status-codes": {"503", "409"},  # with retriable_status_codes=(503, 409)
    "503": {"503"},
    "404": {"404"},
    "cancelled": {"g1"},
    "deadline-exceeded": {"g4"},
    "resource-exhausted": {"g8"},
    "internal": {"g13"},
    "unavailable": {"g14"},
    "no-such-condition": set(),
}


@pytest.mark.parametrize(
    ("condition", "outcome_name"),
    [(c, o) for c in TABLE for o in ALL],
)
def test_retryable_condition_x_outcome(condition: str, outcome_name: str) -> None:
    policy = RetryPolicy(retry_on=(condition,), retriable_status_codes=(503, 409))
    assert retryable(policy, ALL[outcome_name]) is (outcome_name in TABLE[condition])


def test_istio_default_policy() -> None:
    p = RetryPolicy()  # connect-failure, refused-stream, unavailable, cancelled, 503
    yes = {"CF", "REF", "RST_REUSED", "503", "g14", "g1"}
    for name, o in ALL.items():
        assert retryable(p, o) is (name in yes), name


def test_empty_retry_on_retries_nothing() -> None:
    p = RetryPolicy(retry_on=())
    assert not any(retryable(p, o) for o in ALL.values())


@pytest.mark.parametrize(
    ("method", "kept", "want"),
    [
        ("GET", 0, True),  # idempotent, no body
        ("HEAD", 0, True),
        ("POST", 0, True),  # no body: the whole (empty) body is held
        ("POST", 10 * 1024, True),  # small kept body: replayable
        ("POST", REPLAY_LIMIT_BYTES, True),
        ("POST", REPLAY_LIMIT_BYTES + 1, False),
        ("POST", None, False),  # body outgrew the copy
        ("PUT", 10 * 1024, True),
        ("PUT", None, False),  # idempotent, but the body can no longer be replayed
        ("GET", None, False),
        ("PATCH", 100, True),
    ],
)
def test_request_replayable(method: str, kept: int | None, want: bool) -> None:
    assert request_replayable(method, kept) is want


def test_idempotent_methods() -> None:
    assert frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"}) == IDEMPOTENT_METHODS
    assert REPLAY_LIMIT_BYTES == 65536


P2 = RetryPolicy(attempts=2, retry_on=("5xx",))


@pytest.mark.parametrize(
    ("outcome", "tries_done", "replayable", "started", "budget", "want"),
    [
        (S503, 1, True, False, True, True),
        (S503, 2, True, False, True, True),
        (S503, 3, True, False, True, False),  # 1 try + 2 retries made: done
        (S200, 1, True, False, True, False),  # not retryable
        (S503, 1, False, False, True, False),  # body not replayable
        (S503, 1, True, True, True, False),  # response bytes already downstream
        (RST, 1, True, True, True, False),
        (S503, 1, True, False, False, False),  # budget exhausted
        (CF, 1, True, False, True, True),
    ],
)
def test_should_retry(
    outcome: Outcome, tries_done: int, replayable: bool, started: bool, budget: bool, want: bool
) -> None:
    assert should_retry(P2, outcome, tries_done, replayable, started, budget) is want


def test_attempts_zero_never_retries() -> None:
    assert not should_retry(RetryPolicy(attempts=0, retry_on=("5xx",)), S503, 1, True, False, True)


@pytest.mark.parametrize(
    ("active_requests", "active_retries", "want"),
    [
        (0, 0, True),
        (0, 2, True),
        (0, 3, False),  # min 3 concurrent
        (10, 2, True),
        (10, 3, False),  # 20% of 10 = 2 < min 3
        (100, 19, True),
        (100, 20, False),  # 20% of 100
        (1000, 199, True),
        (1000, 200, False),
    ],
)
def test_budget(active_requests: int, active_retries: int, want: bool) -> None:
    assert budget_allows(RetryBudget(percent=20.0, min_concurrent=3), active_requests, active_retries) is want


@pytest.mark.parametrize(
    ("n", "r", "want"),
    [
        (1, 0.0, 0.0),
        (1, 0.5, 0.0125),
        (2, 0.5, 0.025),
        (3, 0.5, 0.05),
        (4, 0.999, 0.2 * 0.999),
        (5, 0.5, 0.125),  # 0.4 capped at 0.25
        (50, 0.5, 0.125),
        (0, 0.5, 0.0125),  # retry number below 1 treated as the first
    ],
)
def test_backoff_table(n: int, r: float, want: float) -> None:
    assert backoff_s(n, r) == pytest.approx(want)


@given(
    n=st.integers(min_value=1, max_value=10_000),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    base=st.floats(min_value=0.001, max_value=1.0),
    cap=st.floats(min_value=0.001, max_value=10.0),
)
def test_backoff_bounds(n: int, r: float, base: float, cap: float) -> None:
    b = backoff_s(n, r, base_s=base, cap_s=cap)
    assert 0.0 <= b <= min(cap, base * 2.0 ** min(n - 1, 64))


class _Failing(Attempts):
    """Attempts with only what ``fail`` reads; the local answer is recorded, not sent."""

    def __init__(self, tries: int) -> None:
        self.tries = tries
        self.answered: tuple[int, str] | None = None

    def local_failure(self, status: int, flag: str) -> None:
        self.answered = (status, flag)


@pytest.mark.parametrize(
    ("last", "tries", "want"),
    [
        (None, 0, (503, "UH")),
        (TO, 1, (504, "UT")),
        (TO, 3, (504, "UT")),  # the last try timed out, whatever came before (Envoy)
        (RST, 1, (503, "UC")),
        (RST, 3, (503, "URX")),
        (UPE, 1, (502, "UPE")),  # Envoy since 1.18: an upstream protocol error is a 502, not 503 UC
        (UPE, 3, (502, "URX")),
        (CF, 1, (503, "UF")),
        (REF, 1, (503, "UF")),
        (CF, 2, (503, "URX")),
    ],
)
def test_the_local_answer_when_tries_are_exhausted(last: Outcome | None, tries: int, want: tuple[int, str]) -> None:
    a = _Failing(tries)
    a.fail(last, "")
    assert a.answered == want
