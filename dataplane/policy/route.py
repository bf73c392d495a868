"""Route match and weighted destination choice, Istio VirtualService semantics.

``match_route`` walks the routes in order and returns the first whose ``matches`` holds (any one
RouteMatch; within one, every condition). The compiled snapshot ends with a catch-all route, so
None means the user's routes really cover nothing (the proxy answers 404 with flag NR).

URI matching follows Envoy: ``prefix`` is compared with the request target as sent (path plus
query string, so a prefix may pin a query parameter), while ``exact`` and ``regex`` see only the
path, so ``/search?q=x`` still matches exact ``/search``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from meshns.snapshot import HttpRoute, RouteMatch, StringMatch, WeightedDestination


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str] | None:
    # Compiled once per pattern for the life of the process (patterns only change on reload, and
    # the cache is bounded so a stream of reloads cannot grow it without limit). A pattern Python
    # cannot compile matches nothing rather than raising on the request path; the control plane is
    # the place that should have rejected it.
    try:
        return re.compile(pattern)
    except re.error:
        return None


def string_matches(m: StringMatch, value: str) -> bool:
    if m.kind == "exact":
        return value == m.value
    if m.kind == "prefix":
        return value.startswith(m.value)
    rx = _compile(m.value)
    return rx is not None and rx.fullmatch(value) is not None


def _uri_matches(m: StringMatch, target: str) -> bool:
    if m.kind == "prefix":
        return target.startswith(m.value)
    path, _, _ = target.partition("?")
    return string_matches(m, path)


def route_match_holds(m: RouteMatch, method: str, target: str, headers: Mapping[str, str]) -> bool:
    if m.method is not None and not string_matches(m.method, method):
        return False
    if m.uri is not None and not _uri_matches(m.uri, target):
        return False
    for h in m.headers:
        value = headers.get(h.name)
        if value is None or not string_matches(h.match, value):
            return False
    return True


def match_route(
    routes: Sequence[HttpRoute], method: str, path: str, headers: Mapping[str, str]
) -> HttpRoute | None:
    """``path`` is the request target as sent (origin form, query included); ``headers`` keys are
    lower case."""
    for route in routes:
        if not route.matches:
            return route
        if any(route_match_holds(m, method, path, headers) for m in route.matches):
            return route
    return None


def pick_weighted(dests: Sequence[WeightedDestination], r: float) -> WeightedDestination:
    """Choose proportionally to weight with the draw ``r`` in [0, 1).

    Weight 0 (or negative, treated as 0) is never chosen while another destination has weight;
    when all are 0 the first is returned so a route always has somewhere to go. Raises ValueError
    on an empty sequence (a compiled route always has at least one destination).
    """
    if not dests:
        raise ValueError("route has no destinations")
    total = sum(max(0, d.weight) for d in dests)
    if total <= 0:
        return dests[0]
    point = r * total
    acc = 0
    last = dests[0]
    for d in dests:
        w = max(0, d.weight)
        if w == 0:
            continue
        acc += w
        last = d
        if point < acc:
            return d
    # Only reached when r is at or past 1.0 (a caller bug or float rounding): the last weighted one.
    return last
