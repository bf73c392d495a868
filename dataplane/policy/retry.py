"""Retry eligibility and backoff, Istio/Envoy semantics.

One try ends in an ``Outcome``. Whether to try again is ``should_retry``: the outcome must meet a
condition of the route's ``retry_on`` (``retryable``), tries must remain, the request must be
replayable, nothing of the response may have gone downstream, and the service's retry budget must
have room. ``RetryPolicy.attempts`` is Istio's "retries after the first try": attempts=2 allows at
most 3 tries in all.

Condition semantics (``retryable``), from Envoy's RetryStateImpl:

- ``5xx``: any 5xx status, and every failure without a response (connect failure, refused, reset,
  protocol error, per-try timeout): the proxy would answer those with a 5xx itself.
- ``gateway-error``: 502/503/504, and like Envoy every failure without a response too.
- ``reset``: no response at all: reset/closed, a response that broke HTTP (Envoy's protocol_error
  reset reason), per-try timeout, and connect failures (Envoy's RETRY_ON_RESET takes every reset
  reason, a failed connect included).
- ``connect-failure``: connect failure or refused only (a connect timeout is a connect failure).
- ``refused-stream``: HTTP/2 REFUSED_STREAM. Over HTTP/1.1 the analogue is a reused keep-alive
  connection that the upstream closed before sending any byte: the server had closed it idle and
  never saw the request, so a retry is safe and expected.
- ``retriable-status-codes``: status in ``policy.retriable_status_codes``; a bare number such as
  ``"503"`` in retry_on matches that status (Istio accepts both forms).
- gRPC: ``cancelled``, ``deadline-exceeded``, ``internal``, ``resource-exhausted``, ``unavailable``
  match the response's grpc-status.

Replay (``request_replayable``): a request is replayed only when the proxy still holds everything
it sent. An idempotent method without a body always is. Any method, POST included, whose whole body
fit in the replay copy (at most 64 KiB, Linkerd's limit) is too: the mesh cannot know whether the
application is idempotent, and Istio retries POST on the same conditions. A body that outgrew the
copy is never replayed, whatever the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from meshns.snapshot import RetryBudget, RetryPolicy

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
REPLAY_LIMIT_BYTES: Final = 64 * 1024

OutcomeKind = Literal["connect_failure", "refused", "reset", "protocol_error", "timeout", "status"]

_GRPC_CODES: Final = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
_GATEWAY_ERRORS: Final = frozenset({502, 503, 504})
_NO_RESPONSE: Final = frozenset({"connect_failure", "refused", "reset", "protocol_error", "timeout"})
_CONNECT: Final = frozenset({"connect_failure", "refused"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one try upstream ended. Build with the class methods, not the constructor."""

    kind: OutcomeKind
    code: int | None = None  # the HTTP status, only for kind "status"
    grpc_status: int | None = None
    reused_connection: bool = False  # for "reset": the connection had served requests before

    @classmethod
    def connect_failure(cls) -> Outcome:
        return cls("connect_failure")

    @classmethod
    def refused(cls) -> Outcome:
        return cls("refused")

    @classmethod
    def reset(cls, reused_connection: bool = False) -> Outcome:
        return cls("reset", reused_connection=reused_connection)

    @classmethod
    def protocol_error(cls) -> Outcome:
        """The upstream answered with something that is not a valid response (Envoy's reset
        reason protocol_error): 502 UPE, where a reset is 503 UC."""
        return cls("protocol_error")

    @classmethod
    def timeout(cls) -> Outcome:
        return cls("timeout")

    @classmethod
    def status(cls, code: int, grpc_status: int | None = None) -> Outcome:
        if grpc_status is None:
            # One per status code, shared (outcomes are frozen): a response costs a dict lookup.
            cached = _STATUS_OUTCOMES.get(code)
            if cached is None:
                cached = _STATUS_OUTCOMES[code] = cls("status", code=code)
            return cached
        return cls("status", code=code, grpc_status=grpc_status)

    @property
    def responded(self) -> bool:
        return self.kind == "status"

    @property
    def is_connect_failure(self) -> bool:
        return self.kind in _CONNECT


_STATUS_OUTCOMES: dict[int, Outcome] = {}


def request_replayable(method: str, body_bytes_kept: int | None) -> bool:
    """``body_bytes_kept``: 0 for no body, the size of the complete kept copy, or None once the
    body outgrew the copy (the proxy stopped keeping it)."""
    # The method does not change the answer today: an idempotent method is replayable exactly
    # when its body (usually none) is held, and so is any other method. It stays in the signature
    # so a stricter mode (idempotent methods only) is a change here, not in the proxy.
    return body_bytes_kept is not None and 0 <= body_bytes_kept <= REPLAY_LIMIT_BYTES


def _meets(condition: str, policy: RetryPolicy, o: Outcome) -> bool:
    code = o.code
    if condition in ("5xx", "gateway-error"):
        if o.kind in _NO_RESPONSE:
            return True
        if code is None:
            return False
        return 500 <= code <= 599 if condition == "5xx" else code in _GATEWAY_ERRORS
    if condition == "reset":
        return o.kind in _NO_RESPONSE
    if condition == "connect-failure":
        return o.kind in _CONNECT
    if condition == "refused-stream":
        return o.kind == "reset" and o.reused_connection
    if condition == "retriable-status-codes":
        return code is not None and code in policy.retriable_status_codes
    grpc = _GRPC_CODES.get(condition)
    if grpc is not None:
        return o.grpc_status == grpc
    if condition.isdigit():
        return code == int(condition)
    return False  # unknown conditions are ignored, as Envoy does


def retryable(policy: RetryPolicy, outcome: Outcome) -> bool:
    return any(_meets(c, policy, outcome) for c in policy.retry_on)


def should_retry(
    policy: RetryPolicy,
    outcome: Outcome,
    tries_done: int,
    replayable: bool,
    response_started: bool,
    budget_ok: bool,
) -> bool:
    """``tries_done`` counts the tries made so far, the first included."""
    return (
        not response_started
        and replayable
        and tries_done <= policy.attempts
        and budget_ok
        and retryable(policy, outcome)
    )


def backoff_s(retry_number: int, r: float, base_s: float = 0.025, cap_s: float = 0.25) -> float:
    """Fully jittered exponential backoff before retry ``retry_number`` (1 for the first retry).

    Full jitter (uniform over [0, ceiling)) spreads the retries of many clients that failed at the
    same moment, which matters more than the mean wait.
    """
    n = max(1, retry_number)
    # Exponent capped so a huge retry number cannot overflow the float; the cap wins long before.
    ceiling = min(cap_s, base_s * 2.0 ** min(n - 1, 64))
    return min(1.0, max(0.0, r)) * ceiling


def budget_allows(budget: RetryBudget, active_requests: int, active_retries: int) -> bool:
    """Retries in flight stay under ``percent`` of active requests, but ``min_concurrent`` are
    always allowed, so a quiet service can still retry."""
    return active_retries < max(budget.min_concurrent, budget.percent / 100 * active_requests)
