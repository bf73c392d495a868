"""The agent's watcher against a real etcd: its view stays exactly etcd's through an etcd
restart (resumes from its revision, nothing lost, nothing twice) and through a compaction
(lists again)."""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd_server import ETCD, EtcdServer

from meshns.cluster.agent import Listing, Watcher, fold
from meshns.cluster.etcd import Etcd, WatchBatch

pytestmark = pytest.mark.skipif(not Path(ETCD).exists(), reason="etcd is not installed (apt-get install etcd-server)")

WAIT_S = 30.0


@pytest.fixture
def server() -> Iterator[EtcdServer]:
    with EtcdServer() as srv:
        yield srv


class Follower:
    """A watcher and the view folded from what it hands over, as the agent keeps it."""

    def __init__(self, etcd: Etcd, prefix: str, resume_from: int = 0) -> None:
        self.q: queue.Queue[Listing | WatchBatch] = queue.Queue()
        self.w = Watcher(etcd, prefix, self.q, resume_from)
        self.view: dict[str, bytes] = {}
        self.revision = 0
        self.listings = 0
        self.w.start()

    def settle(self, cond: Callable[[dict[str, bytes]], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not cond(self.view):
            if time.monotonic() > deadline:
                pytest.fail(f"not within {WAIT_S} s: {what}; view {self.view}")
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            self.listings += isinstance(item, Listing)
            self.view, self.revision = fold(self.view, self.revision, item)

    def close(self) -> None:
        self.w.stop.set()
        self.w.join(10)


def etcd_view(etcd: Etcd, prefix: str) -> dict[str, bytes]:
    kvs, _ = etcd.get_prefix(prefix)
    return {kv.key: kv.value for kv in kvs}


def test_view_follows_etcd_through_a_restart(server: EtcdServer) -> None:
    etcd, prefix = Etcd([server.url]), f"/w{secrets.token_hex(3)}/"
    etcd.put(prefix + "before", b"1")
    f = Follower(etcd, prefix)
    try:
        f.settle(lambda v: v == {prefix + "before": b"1"}, "the first listing")
        server.stop()
        server.start()
        for i in range(50):  # written after the restart: the watcher must resume, not skip
            etcd.put(f"{prefix}k{i}", str(i).encode())
        etcd.delete(prefix + "before")
        etcd.put(prefix + "k7", b"changed")
        want = etcd_view(etcd, prefix)
        f.settle(lambda v: v == want, "the view to match etcd after the restart")
        assert f.listings == 1  # resumed from its revision, never listed again
    finally:
        f.close()


def test_compacted_revision_means_listing_again(server: EtcdServer) -> None:
    etcd, prefix = Etcd([server.url]), f"/c{secrets.token_hex(3)}/"
    etcd.put(prefix + "a", b"1")
    _, remembered = etcd.get_prefix(prefix)
    for i in range(20):
        etcd.put(prefix + "a", str(i).encode())
    etcd.put(prefix + "b", b"2")
    rev = etcd.status()
    etcd.compact(rev)  # the remembered revision is gone
    f = Follower(etcd, prefix, resume_from=remembered + 1)
    try:
        want = etcd_view(etcd, prefix)
        f.settle(lambda v: v == want, "a fresh listing after the compaction")
        assert f.listings == 1
        etcd.put(prefix + "c", b"3")  # and it watches on from there
        f.settle(lambda v: v.get(prefix + "c") == b"3", "events after the listing")
    finally:
        f.close()
