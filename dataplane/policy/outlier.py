"""Passive outlier detection: eject endpoints that keep failing, Envoy's consecutive-5xx detector.

Theory of operation. Per endpoint ip the detector keeps three numbers:

    consecutive    errors in a row since the last success (or return from ejection)
    times_ejected  ejection multiplier, grows by one per ejection
    ejected_until  monotonic time the current ejection ends, None when in rotation

The proxy reports every finished try with ``record`` (error = 5xx response or no response at all;
``is_failure`` makes that call from a retry.Outcome). An endpoint reaching ``consecutive_5xx``
errors in a row is ejected for ``base_ejection_s * times_ejected``, capped at ``max_ejection_s``,
so an endpoint that keeps coming back broken stays out longer each time. A success resets the
consecutive count. Results that arrive while the endpoint is ejected (requests that were in flight)
are ignored: the decision is already made, and they must not extend it.

Ejection is refused when it would take out more than ``max(1, floor(max_ejection_percent% of the
endpoints))`` at once: the detector sees symptoms, and a whole service failing is more likely the
caller's or the network's fault than every endpoint's. At least one endpoint may always be ejected
(as Envoy), otherwise small services could never eject anything at the default 10%. A refused
ejection leaves the count at the threshold, so the next error tries again once room frees up.

There are no timers: ``now`` comes with every call and expiry is checked lazily. An endpoint whose
time is up is back in rotation with a fresh consecutive count; its multiplier is kept and then
decays by one for every full ``interval_s`` it stays in rotation (Envoy decrements it each interval
a host is healthy), so a flapping endpoint is punished harder while one that recovered for good
goes back to short ejections. The multiplier is capped where base * times reaches the maximum so
the decay after a long outage does not take forever.

A disabled policy (or ``consecutive_5xx`` <= 0) never ejects; disabling on reload returns every
ejected endpoint at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from meshns.dataplane.policy.retry import Outcome
from meshns.snapshot import Endpoint, OutlierDetection


def is_failure(outcome: Outcome) -> bool:
    """What counts as an error for outlier detection: a 5xx, or no response at all."""
    if outcome.kind == "status":
        return outcome.code is not None and 500 <= outcome.code <= 599
    return True


@dataclass(slots=True)
class _HostState:
    consecutive: int = 0
    times_ejected: int = 0
    ejected_until: float | None = None
    in_rotation_since: float | None = None  # for the multiplier's decay


class OutlierDetector:
    def __init__(self, policy: OutlierDetection) -> None:
        self.policy = policy
        self._hosts: dict[str, _HostState] = {}
        self._ejected: set[str] = set()  # ips with ejected_until set (maybe expired, lazily)
        self.ejections = 0  # total ejections made, for stats

    @property
    def enabled(self) -> bool:
        return self.policy.enabled and self.policy.consecutive_5xx > 0

    def update(self, policy: OutlierDetection) -> None:
        self.policy = policy
        if not self.enabled:
            self._hosts.clear()
            self._ejected.clear()

    def forget(self, keep: set[str]) -> None:
        """Drop the state of endpoints no longer in the service."""
        for ip in [ip for ip in self._hosts if ip not in keep]:
            del self._hosts[ip]
        self._ejected &= keep

    def is_ejected(self, ip: str, now: float) -> bool:
        if ip not in self._ejected:  # the common case: one set lookup
            return False
        return self._check_return(ip, self._hosts[ip], now)

    def ejected(self, now: float) -> set[str]:
        return {ip for ip in list(self._ejected) if self.is_ejected(ip, now)}

    def ejected_until(self, ip: str) -> float | None:
        """When the ejection of ``ip`` ends (loop time), for /clusters; None if not ejected."""
        h = self._hosts.get(ip)
        return None if h is None or ip not in self._ejected else h.ejected_until

    def times_ejected(self, ip: str) -> int:
        h = self._hosts.get(ip)
        return 0 if h is None else h.times_ejected

    def record(self, ip: str, outcome_is_error: bool, now: float, total_endpoints: int) -> bool:
        """Account one finished try; True when this call ejected ``ip``."""
        if not self.enabled:
            return False
        h = self._hosts.get(ip)
        if h is None:
            h = self._hosts[ip] = _HostState()
        if ip in self._ejected and self._check_return(ip, h, now):
            return False
        self._decay(h, now)
        if not outcome_is_error:
            h.consecutive = 0
            return False
        h.consecutive += 1
        if h.consecutive < self.policy.consecutive_5xx:
            return False
        if len(self.ejected(now)) + 1 > self._max_ejected(total_endpoints):
            return False
        self._eject(ip, h, now)
        return True

    def _max_ejected(self, total_endpoints: int) -> int:
        # percent * total first: exact for integral percents, no 0.1 * 30 = 3.0000000000000004.
        return max(1, math.floor(self.policy.max_ejection_percent * total_endpoints / 100))

    def _eject(self, ip: str, h: _HostState, now: float) -> None:
        p = self.policy
        cap = max(1, math.ceil(p.max_ejection_s / p.base_ejection_s)) if p.base_ejection_s > 0 else 1
        h.times_ejected = min(h.times_ejected + 1, cap)
        h.ejected_until = now + min(p.base_ejection_s * h.times_ejected, p.max_ejection_s)
        h.consecutive = 0
        h.in_rotation_since = None
        self._ejected.add(ip)
        self.ejections += 1

    def _check_return(self, ip: str, h: _HostState, now: float) -> bool:
        """True while ejected; puts the endpoint back once its time is up."""
        until = h.ejected_until
        if until is not None and now < until:
            return True
        h.ejected_until = None
        h.consecutive = 0
        h.in_rotation_since = until
        self._ejected.discard(ip)
        return False

    def _decay(self, h: _HostState, now: float) -> None:
        since = h.in_rotation_since
        interval = self.policy.interval_s
        if since is None or h.times_ejected == 0 or interval <= 0:
            return
        steps = math.floor((now - since) / interval)
        if steps > 0:
            h.times_ejected = max(0, h.times_ejected - steps)
            h.in_rotation_since = since + steps * interval


def healthy(candidates: Sequence[Endpoint], detector: OutlierDetector, now: float) -> list[Endpoint]:
    """The candidates not ejected. When every one is ejected, all of them (panic mode, as Envoy
    does below its panic threshold): sending to a host that may be broken beats failing every
    request with "no healthy upstream" for the length of an ejection."""
    kept = [e for e in candidates if not detector.is_ejected(e.ip, now)]
    return kept if kept else list(candidates)
