"""match_route and pick_weighted as tables."""

from __future__ import annotations

from collections import Counter

import pytest

from meshns.dataplane.policy.route import match_route, pick_weighted, string_matches
from meshns.snapshot import HeaderMatch, HttpRoute, RouteMatch, StringMatch, WeightedDestination


def sm(kind: str, value: str) -> StringMatch:
    return StringMatch(kind, value)  # type: ignore[arg-type]


def route(name: str, *matches: RouteMatch) -> HttpRoute:
    return HttpRoute(name=name, matches=matches)


ROUTES = (
    route("v2-header", RouteMatch(headers=(HeaderMatch("x-version", sm("exact", "v2")),))),
    route("canary-prefix", RouteMatch(headers=(HeaderMatch("x-user", sm("prefix", "canary-")),))),
    route("trace-regex", RouteMatch(headers=(HeaderMatch("x-trace", sm("regex", "[0-9a-f]{4}")),))),
    route("api-exact", RouteMatch(uri=sm("exact", "/api/v1"))),
    route("static-prefix", RouteMatch(uri=sm("prefix", "/static/"))),
    route("q-prefix", RouteMatch(uri=sm("prefix", "/search?debug=1"))),
    route("item-regex", RouteMatch(uri=sm("regex", r"/items/\d+"))),
    route("delete-only", RouteMatch(method=sm("exact", "DELETE"))),
    route("either", RouteMatch(uri=sm("exact", "/a")), RouteMatch(uri=sm("exact", "/b"))),
    route("both", RouteMatch(uri=sm("prefix", "/both"), method=sm("exact", "POST"),
                             headers=(HeaderMatch("x-k", sm("exact", "1")),))),
    route("catch-all"),
)


@pytest.mark.parametrize(
    ("method", "target", "headers", "want"),
    [
        # headers: exact / prefix / regex (full match), absent header fails
        ("GET", "/", {"x-version": "v2"}, "v2-header"),
        ("GET", "/", {"x-version": "v2x"}, "catch-all"),
        ("GET", "/", {"x-version": "V2"}, "catch-all"),
        ("GET", "/", {"x-user": "canary-7"}, "canary-prefix"),
        ("GET", "/", {"x-user": "xcanary-7"}, "catch-all"),
        ("GET", "/", {"x-trace": "beef"}, "trace-regex"),
        ("GET", "/", {"x-trace": "beef0"}, "catch-all"),  # fullmatch, not search
        ("GET", "/", {"x-trace": "xbeef"}, "catch-all"),
        ("GET", "/", {}, "catch-all"),
        # first match wins: the header route comes before the uri route
        ("GET", "/api/v1", {"x-version": "v2"}, "v2-header"),
        # uri exact ignores the query string
        ("GET", "/api/v1", {}, "api-exact"),
        ("GET", "/api/v1?x=1", {}, "api-exact"),
        ("GET", "/api/v1/", {}, "catch-all"),
        # uri prefix sees the full target, query included
        ("GET", "/static/app.js", {}, "static-prefix"),
        ("GET", "/static", {}, "catch-all"),
        ("GET", "/search?debug=1&q=x", {}, "q-prefix"),
        ("GET", "/search?q=x&debug=1", {}, "catch-all"),
        # uri regex: full path, query stripped
        ("GET", "/items/42", {}, "item-regex"),
        ("GET", "/items/42?full=1", {}, "item-regex"),
        ("GET", "/items/42/x", {}, "catch-all"),
        ("GET", "/items/abc", {}, "catch-all"),
        # method: exact and case-sensitive
        ("DELETE", "/x", {}, "delete-only"),
        ("delete", "/x", {}, "catch-all"),
        # any of the matches (OR)
        ("GET", "/a", {}, "either"),
        ("GET", "/b?z", {}, "either"),
        # all conditions of one match (AND)
        ("POST", "/both/1", {"x-k": "1"}, "both"),
        ("GET", "/both/1", {"x-k": "1"}, "catch-all"),
        ("POST", "/both/1", {}, "catch-all"),
        ("POST", "/nope", {"x-k": "1"}, "catch-all"),
    ],
)
def test_match_route(method: str, target: str, headers: dict[str, str], want: str) -> None:
    got = match_route(ROUTES, method, target, headers)
    assert got is not None
    assert got.name == want


def test_no_route_without_catch_all() -> None:
    assert match_route(ROUTES[:-1], "GET", "/nothing", {}) is None
    assert match_route((), "GET", "/", {}) is None


def test_empty_route_match_matches_everything() -> None:
    r = route("empty-match", RouteMatch())
    assert match_route((r,), "PATCH", "/anything?x", {}) is r


def test_invalid_regex_matches_nothing() -> None:
    assert not string_matches(sm("regex", "(unclosed"), "(unclosed")
    r = route("bad", RouteMatch(uri=sm("regex", "[")))
    assert match_route((r, route("all")), "GET", "[", {}) is not None
    assert match_route((r,), "GET", "[", {}) is None


def test_method_prefix_and_regex() -> None:
    assert string_matches(sm("prefix", "PO"), "POST")
    assert string_matches(sm("regex", "GET|HEAD"), "HEAD")
    assert not string_matches(sm("regex", "GET|HEAD"), "HEADX")


A, B, C = WeightedDestination("a", 80), WeightedDestination("b", 20), WeightedDestination("c", 0)


@pytest.mark.parametrize(
    ("dests", "r", "want"),
    [
        ((A, B), 0.0, A),
        ((A, B), 0.7999, A),
        ((A, B), 0.8, B),
        ((A, B), 0.999999, B),
        ((C, A, B), 0.0, A),  # weight 0 first: skipped
        ((A, C, B), 0.8, B),
        ((A, B, C), 0.9999999999, B),  # weight 0 last: never reached
        ((C,), 0.5, C),  # all zero: the first
        ((C, WeightedDestination("d", 0)), 0.99, C),
        ((A,), 0.3, A),
        ((A, B), 1.0, B),  # out-of-range draw: still a weighted one, no exception
    ],
)
def test_pick_weighted_boundaries(
    dests: tuple[WeightedDestination, ...], r: float, want: WeightedDestination
) -> None:
    assert pick_weighted(dests, r) is want


def test_pick_weighted_distribution_over_grid() -> None:
    dests = (WeightedDestination("a", 50), WeightedDestination("b", 30), WeightedDestination("z", 0),
             WeightedDestination("c", 20))
    n = 1000
    counts = Counter(pick_weighted(dests, i / n).subset for i in range(n))
    assert counts == {"a": 500, "b": 300, "c": 200}


def test_pick_weighted_empty_raises() -> None:
    with pytest.raises(ValueError, match="no destinations"):
        pick_weighted((), 0.5)
