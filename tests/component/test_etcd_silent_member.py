"""The etcd client's failover past a member that answers nothing (its machine off, its cable
cut): unlike a stopped etcd, which refuses at once, such a member lets a connect hang. The client
must give up on it after its short connect timeout while another endpoint is left, not after the
whole request timeout, or a lease renewed through it expires first.

The silent member is a loopback listener whose accept queue is full: the kernel drops further
SYNs, exactly what a peer that vanished does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from etcd_server import ETCD, EtcdServer

from meshns.cluster.etcd import Etcd, EtcdUnavailable

pytestmark = pytest.mark.skipif(not Path(ETCD).exists(), reason="etcd is not installed (apt-get install etcd-server)")

T = TypeVar("T")
WAIT_S = 30.0  # a bound for "does not hang", far above any connect timeout used here


@pytest.fixture(scope="module")
def server() -> Iterator[EtcdServer]:
    with EtcdServer("silent") as srv:
        yield srv


@pytest.fixture
def silent() -> Iterator[str]:
    """The URL of a listener that accepts nothing more: connects to it hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    addr = listener.getsockname()
    held = [socket.create_connection(addr, timeout=5)]  # fills the accept queue
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(OSError):
        probe.connect(addr)  # the premise: a connect to it now hangs
    probe.close()
    try:
        yield f"http://{addr[0]}:{addr[1]}"
    finally:
        for s in [*held, listener]:
            s.close()


def in_thread(call: Callable[[], T]) -> T | BaseException:
    """Run ``call`` in a thread with a bound: a call that hangs fails the test, not the run.
    Its result, or what it raised."""
    out: list[T | BaseException] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT_S)
    assert out, f"the call did not return within {WAIT_S} s"
    return out[0]


def test_lease_is_kept_alive_past_a_silent_first_endpoint(server: EtcdServer, silent: str) -> None:
    # The request timeout is far longer than the lease: only the short connect timeout keeps it.
    direct = Etcd([server.url])
    lease = direct.lease_grant(3)
    etcd = Etcd([silent, server.url], timeout_s=WAIT_S)
    ttl = in_thread(lambda: etcd.lease_keepalive(lease))
    assert ttl == 3, ttl
    assert etcd.endpoints[0] == silent
    # It answered from the second endpoint; that one is tried first from now on.
    rev = in_thread(etcd.status)
    assert isinstance(rev, int) and rev > 0, rev
    direct.lease_revoke(lease)


def test_watch_connects_past_a_silent_first_endpoint(server: EtcdServer, silent: str) -> None:
    etcd = Etcd([silent, server.url], timeout_s=WAIT_S)
    rev = Etcd([server.url]).put("/silent/k", b"v")
    stop = threading.Event()

    def first() -> list[str]:
        for batch in etcd.watch("/silent/", rev, stop):
            stop.set()
            return [e.kv.key for e in batch.events]
        return []

    assert in_thread(first) == ["/silent/k"]


def test_a_silent_last_endpoint_gets_the_whole_timeout(silent: str) -> None:
    # Nothing else to try: the connect is not cut short (a slow but live etcd still answers).
    started = time.monotonic()
    err = in_thread(lambda: Etcd([silent], timeout_s=1.5, connect_timeout_s=0.1).status())
    waited = time.monotonic() - started
    assert isinstance(err, EtcdUnavailable) and "timed out" in str(err), err
    assert waited >= 1.4, waited  # a timeout never fires early: the whole 1.5 s, not 0.1 s
