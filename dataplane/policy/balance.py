"""Endpoint choice among the candidates the caller already filtered (subset, tried, ejected).

least_request is Istio's default: power of two choices (P2C). Two distinct candidates drawn at
random, the one with fewer active requests wins. It avoids the herd behaviour of "always the least
loaded" (every proxy piling onto the same idle endpoint) while still steering away from slow ones.

round_robin keeps a cursor in the Balancer. The candidate list is rebuilt per request (retries
exclude the endpoint just tried, ejections come and go), so the cursor is the *ip* last chosen, not
an index: the next pick is the smallest ip after it in a fixed order, wrapping around. The rotation
therefore survives lists that are rebuilt, reordered or shrunk between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from meshns.snapshot import Endpoint, LbPolicy


def _index(r: float, n: int) -> int:
    # Clamped so a random source that returns exactly 1.0 cannot index past the end.
    return min(n - 1, max(0, int(r * n)))


class Balancer:
    def __init__(self, policy: LbPolicy) -> None:
        self.policy: LbPolicy = policy
        self._rr_last: str | None = None

    def set_policy(self, policy: LbPolicy) -> None:
        self.policy = policy

    def pick(
        self,
        candidates: Sequence[Endpoint],
        active: Mapping[str, int],
        rand: Callable[[], float],
    ) -> Endpoint | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        if self.policy == "round_robin":
            return self._round_robin(candidates)
        if self.policy == "random":
            return candidates[_index(rand(), n)]
        return self._p2c(candidates, active, rand)

    def _p2c(
        self, candidates: Sequence[Endpoint], active: Mapping[str, int], rand: Callable[[], float]
    ) -> Endpoint:
        n = len(candidates)
        i = _index(rand(), n)
        # Draw the second from the n-1 others so the two are always distinct.
        j = _index(rand(), n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        return b if active.get(b.ip, 0) < active.get(a.ip, 0) else a

    def _round_robin(self, candidates: Sequence[Endpoint]) -> Endpoint:
        # O(n), no sort: the smallest ip after the last one chosen, else the smallest overall.
        last = self._rr_last
        first: Endpoint | None = None
        after: Endpoint | None = None
        for e in candidates:
            if first is None or e.ip < first.ip:
                first = e
            if last is not None and e.ip > last and (after is None or e.ip < after.ip):
                after = e
        chosen = after if after is not None else first
        assert chosen is not None  # candidates is not empty
        self._rr_last = chosen.ip
        return chosen
