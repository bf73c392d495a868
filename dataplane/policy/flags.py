"""Envoy access-log response flags, reused so dashboards and habits carry over from Istio.

The proxy puts the flags of a request (comma separated, in the order they happened) in the
response header ``FLAGS_HEADER`` and in its access log; ``ATTEMPTS_HEADER`` carries the number of
tries made upstream (1 when nothing was retried).
"""

from __future__ import annotations

from typing import Final

UH: Final = "UH"  # no healthy upstream (no endpoint at all, or the subset is empty)
UF: Final = "UF"  # upstream connection failure (refused, unreachable, connect timeout)
UO: Final = "UO"  # upstream overflow: circuit breaker open
URX: Final = "URX"  # retries exhausted: retry limit reached or retry budget empty
UT: Final = "UT"  # upstream request timeout (route timeout or per-try timeout)
DC: Final = "DC"  # downstream connection closed before the response completed
UC: Final = "UC"  # upstream connection closed / reset
UPE: Final = "UPE"  # upstream protocol error: its response was not HTTP (502, as Envoy since 1.18)
NR: Final = "NR"  # no route matched
DI: Final = "DI"  # fault injection delayed the request
FI: Final = "FI"  # fault injection aborted the request
RL: Final = "RL"  # rate limited

FLAGS_HEADER: Final = "x-meshns-response-flags"
ATTEMPTS_HEADER: Final = "x-meshns-attempts"
