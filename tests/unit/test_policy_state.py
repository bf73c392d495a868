"""ServiceStates across snapshot reloads, and choose_endpoint's filtering order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from meshns.dataplane.policy.state import ServiceState, ServiceStates, choose_endpoint
from meshns.snapshot import ConnectionPool, Endpoint, OutlierDetection, RetryBudget, Service, Subset

V1 = (("version", "v1"),)
V2 = (("version", "v2"),)
E1, E2, E3 = Endpoint("a", "10.0.0.1", V1), Endpoint("b", "10.0.0.2", V1), Endpoint("c", "10.0.0.3", V2)
SVC = Service(
    name="web", vip="10.96.0.10", ports=(), endpoints=(E1, E2, E3),
    subsets=(Subset("v1", V1), Subset("v2", V2)), lb="round_robin",
    outlier=OutlierDetection(consecutive_5xx=1, max_ejection_percent=100.0),
)


def const(r: float) -> Callable[[], float]:
    return lambda: r


def test_get_creates_once_and_is_identity_cheap() -> None:
    states = ServiceStates()
    st = states.get(SVC)
    assert states.get(SVC) is st
    assert "web" in states and len(states) == 1


def test_reload_keeps_state_updates_policies_and_forgets_gone_endpoints() -> None:
    states = ServiceStates()
    st = states.get(SVC)
    assert st.breaker.try_start_request()
    st.try_started(E1.ip)
    st.try_started(E3.ip)
    st.try_ended(E3.ip)
    st.outlier.record(E2.ip, True, 0.0, 3)
    st.requests = 7
    assert st.balancer.pick([E1, E2], st.active, const(0.0)) is E1

    reloaded = dataclasses.replace(
        SVC, endpoints=(E1, E3), lb="least_request", pool=ConnectionPool(max_requests=1),
    )
    st2 = states.get(reloaded)
    assert st2 is st  # same state object survives
    assert st.service is reloaded
    assert st.requests == 7 and st.breaker.active_requests == 1
    assert st.balancer.policy == "least_request"
    assert not st.breaker.try_start_request()  # new ceiling, old count
    assert not st.outlier.is_ejected(E2.ip, 1.0)  # E2 gone: its ejection forgotten
    assert st.active == {E1.ip: 1}


def test_sync_keeps_active_count_of_removed_endpoint_until_it_ends() -> None:
    st = ServiceState(SVC)
    st.try_started(E2.ip)
    st.sync(dataclasses.replace(SVC, endpoints=(E1,)))
    assert st.active == {E2.ip: 1}
    st.try_ended(E2.ip)
    st.try_ended(E2.ip)  # unpaired: no negative count
    assert st.active == {}


def test_prune() -> None:
    states = ServiceStates()
    states.get(SVC)
    other = dataclasses.replace(SVC, name="db")
    states.get(other)
    states.prune({"db"})
    assert "web" not in states and "db" in states


def test_equal_but_new_object_syncs() -> None:
    states = ServiceStates()
    st = states.get(SVC)
    copy = dataclasses.replace(SVC)
    assert states.get(copy) is st and st.service is copy


def test_budget_ok() -> None:
    st = ServiceState(dataclasses.replace(SVC, budget=RetryBudget(percent=20.0, min_concurrent=3)))
    st.active_requests, st.active_retries = 100, 19
    assert st.budget_ok()
    st.active_retries = 20
    assert not st.budget_ok()


@pytest.mark.parametrize(
    ("subset", "exclude", "ejected", "want", "prefer"),
    [
        (None, set(), set(), E1.ip, None),  # round robin starts at the smallest ip
        (None, set(), set(), E3.ip, E3.ip),  # the eager connection's endpoint is preferred
        ("v1", set(), set(), E1.ip, E3.ip),  # ... unless the route's subset excludes it
        ("v1", set(), {E2.ip}, E1.ip, E2.ip),  # ... or it is ejected
        ("v1", {E2.ip}, set(), E1.ip, E2.ip),  # ... or already tried
        ("v1", set(), set(), E1.ip, "10.9.9.9"),  # ... or gone from the service
        ("v1", set(), set(), E1.ip, None),
        ("v2", set(), set(), E3.ip, None),
        ("v1", {E1.ip}, set(), E2.ip, None),  # already tried: avoided
        ("v2", {E3.ip}, set(), E3.ip, None),  # only one there: retried on the same endpoint
        ("v1", set(), {E1.ip}, E2.ip, None),  # ejected: avoided
        ("v1", set(), {E1.ip, E2.ip}, E1.ip, None),  # all ejected: panic, all candidates
        ("v1", {E2.ip}, {E1.ip}, E1.ip, None),  # tried E2, E1 ejected: panic keeps E1
        ("nope", set(), set(), None, None),  # unknown subset: no endpoint
    ],
)
def test_choose_endpoint(subset: str | None, exclude: set[str], ejected: set[str], want: str | None,
                         prefer: str | None) -> None:
    st = ServiceState(SVC)
    for ip in ejected:
        st.outlier.record(ip, True, 0.0, 3)
    got = choose_endpoint(SVC, st, subset, exclude, 1.0, const(0.0), prefer)
    assert (got.ip if got else None) == want


def test_choose_endpoint_least_request_uses_active() -> None:
    svc = dataclasses.replace(SVC, lb="least_request")
    st = ServiceState(svc)
    st.try_started(E1.ip)
    got = choose_endpoint(svc, st, "v1", set(), 0.0, const(0.0))
    assert got is E2


def test_choose_endpoint_ejection_expires() -> None:
    st = ServiceState(SVC)
    st.outlier.record(E1.ip, True, 0.0, 3)
    assert choose_endpoint(SVC, st, "v1", set(), 1.0, const(0.0)) is E2
    assert choose_endpoint(SVC, st, "v1", set(), 31.0, const(0.0)) is E1  # back after 30 s
