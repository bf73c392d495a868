"""The client sidecar's session cache (dataplane.tls_sessions): one session per peer, bound to
the identity generation it was made under, dropped when its ticket's lifetime is over."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import cast

import pytest

from meshns.dataplane.tls_sessions import Key, SessionCache

A: Key = (False, "10.0.0.2", "spiffe://cluster.local/ns/default/sa/a")
A_H2: Key = (True, "10.0.0.2", "spiffe://cluster.local/ns/default/sa/a")
B: Key = (False, "10.0.0.3", "spiffe://cluster.local/ns/default/sa/b")
NOW = 1_000_000.0


@dataclass
class FakeSession:
    """What SessionCache reads of an ssl.SSLSession: when it was made and its lifetime (s)."""
    time: int = int(NOW)
    timeout: int = 7200


def session(**kw: int) -> ssl.SSLSession:
    return cast(ssl.SSLSession, FakeSession(**kw))


def test_a_session_is_offered_to_its_own_peer_only() -> None:
    cache = SessionCache()
    assert cache.get(1, A, NOW) is None
    s = session()
    cache.put(1, A, s)
    assert cache.get(1, A, NOW + 1) is s
    assert cache.get(1, A_H2, NOW) is None  # the h2 context is another context
    assert cache.get(1, B, NOW) is None
    cache.put(1, A, s2 := session())
    assert cache.get(1, A, NOW) is s2  # the latest one


def test_a_new_generation_forgets_every_session() -> None:
    cache = SessionCache()
    cache.get(1, A, NOW)
    cache.put(1, A, session())
    cache.put(1, B, session())
    assert cache.get(2, A, NOW) is None
    assert len(cache) == 0
    assert cache.get(2, B, NOW) is None


def test_a_session_from_a_connection_begun_under_an_older_generation_is_not_kept() -> None:
    cache = SessionCache()
    cache.get(1, A, NOW)
    cache.get(2, B, NOW)  # an identity update came while A's handshake was under way
    cache.put(1, A, session())
    assert cache.get(2, A, NOW) is None and len(cache) == 0


@pytest.mark.parametrize(("age", "offered"), [(0, True), (7199, True), (7200, False), (90000, False)])
def test_a_session_past_its_ticket_lifetime_is_dropped(age: int, offered: bool) -> None:
    cache = SessionCache()
    cache.get(1, A, NOW)
    cache.put(1, A, s := session())
    assert (cache.get(1, A, NOW + age) is s) is offered
    assert len(cache) == int(offered)


def test_a_failed_connection_forgets_its_peer_session() -> None:
    cache = SessionCache()
    cache.get(1, A, NOW)
    cache.put(1, A, session())
    cache.put(1, B, b := session())
    cache.drop(A)
    cache.drop(A)  # twice is harmless
    assert cache.get(1, A, NOW) is None and cache.get(1, B, NOW) is b


def test_past_the_limit_the_oldest_peer_goes() -> None:
    cache = SessionCache(limit=2)
    cache.get(1, A, NOW)
    cache.put(1, A, session())
    cache.put(1, B, b := session())
    cache.put(1, B, b := session())  # replacing one evicts nothing
    assert len(cache) == 2
    cache.put(1, A_H2, h := session())
    assert cache.get(1, A, NOW) is None
    assert cache.get(1, B, NOW) is b and cache.get(1, A_H2, NOW) is h
