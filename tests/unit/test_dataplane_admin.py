"""The admin endpoint's routing, without sockets."""

from __future__ import annotations

import json

from meshns.dataplane.admin import AdminState, route
from meshns.dataplane.stats import Stats


def state(**kw: bool) -> AdminState:
    return AdminState("web-1", Stats(), **kw)


def test_ready_follows_state() -> None:
    assert route(b"GET", b"/ready", state()) == (503, "text/plain", b"not ready\n")
    assert route(b"GET", b"/ready", state(ready=True)) == (200, "text/plain", b"ready\n")
    assert route(b"GET", b"/ready", state(ready=True, draining=True)) == (503, "text/plain", b"draining\n")


def test_stats_document() -> None:
    s = state(ready=True)
    s.stats.outbound.accepted = 2
    s.stats.connect_failures = 1
    status, ctype, body = route(b"GET", b"/stats?x=1", s)
    assert (status, ctype) == (200, "application/json")
    doc = json.loads(body)
    assert doc["outbound"] == {"accepted": 2, "bytes_up": 0, "bytes_down": 0}
    assert doc["connect_failures"] == 1
    assert doc["pod"] == "web-1" and doc["ready"] is True and isinstance(doc["pid"], int)


def test_unknown_and_wrong_method() -> None:
    assert route(b"GET", b"/", state())[0] == 404
    assert route(b"GET", b"/stats/prometheus", state())[0] == 404
    assert route(b"POST", b"/ready", state())[0] == 405
    assert route(b"DELETE", b"/x", state())[0] == 404
