"""The etcd client (cluster.etcd) and the shared-store rules (cluster.store) against a real etcd
on loopback: key-value calls, compare-and-set, leases, watches (order, compaction, stop, a
broken stream), etcd going away and coming back, and hosts racing for pod CIDR blocks."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from etcd_server import ETCD, EtcdServer, free_port

from meshns.cluster import keys, store
from meshns.cluster.etcd import Compacted, Etcd, EtcdError, EtcdUnavailable, Event, LeaseExpired, WatchBatch
from meshns.errors import ConflictError, UserError

pytestmark = pytest.mark.skipif(not Path(ETCD).exists(), reason="etcd is not installed (apt-get install etcd-server)")

WAIT_S = 30.0  # upper bound for things that happen "eventually"; never asserted as a duration


@pytest.fixture(scope="module")
def server() -> Iterator[EtcdServer]:
    with EtcdServer() as srv:
        yield srv


@pytest.fixture
def etcd(server: EtcdServer) -> Etcd:
    return Etcd([server.url])


@pytest.fixture
def mesh() -> str:
    return "t" + secrets.token_hex(4)


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        time.sleep(0.1)


def collect(etcd: Etcd, prefix: str, start: int, count: int) -> list[Event]:
    """The first ``count`` events of a watch, read in a thread so a missing event fails the test
    instead of hanging it."""
    events: list[Event] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for batch in etcd.watch(prefix, start, stop):
                events.extend(batch.events)
                if len(events) >= count:
                    stop.set()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(WAIT_S)
    stop.set()
    t.join(WAIT_S)
    assert not errors, errors
    assert len(events) >= count, events
    return events


# -- key-value -----------------------------------------------------------------------------------

def test_put_get_prefix_delete(etcd: Etcd, mesh: str) -> None:
    p = f"/{mesh}/"
    rev_b = etcd.put(p + "b", b"2")
    rev_a = etcd.put(p + "a", b"1")
    etcd.put(f"/{mesh}x", b"outside the prefix")
    assert rev_a > rev_b > 0
    kv = etcd.get(p + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) == (p + "a", b"1", rev_a, rev_a, 0)
    assert etcd.get(p + "missing") is None
    kvs, rev = etcd.get_prefix(p)
    assert [(k.key, k.value) for k in kvs] == [(p + "a", b"1"), (p + "b", b"2")]
    assert rev >= rev_a
    assert etcd.put(p + "a", b"") > rev_a
    assert etcd.get(p + "a").value == b""  # type: ignore[union-attr]
    assert etcd.delete(p + "a") is True
    assert etcd.delete(p + "a") is False
    etcd.put(p + "c/d", b"x")
    assert etcd.delete_prefix(p) == 2
    assert etcd.get_prefix(p)[0] == []
    assert etcd.get(f"/{mesh}x") is not None
    assert etcd.status() >= rev


def test_binary_values_and_unicode_keys(etcd: Etcd, mesh: str) -> None:
    key = f"/{mesh}/ünï/😀"
    value = bytes(range(256))
    etcd.put(key, value)
    assert etcd.get(key).value == value  # type: ignore[union-attr]
    assert [kv.key for kv in etcd.get_prefix(f"/{mesh}/")[0]] == [key]


def test_create_twice(etcd: Etcd, mesh: str) -> None:
    key = f"/{mesh}/k"
    assert etcd.create(key, b"first") is True
    assert etcd.create(key, b"second") is False
    assert etcd.get(key).value == b"first"  # type: ignore[union-attr]


def test_replace_and_delete_if_need_the_current_revision(etcd: Etcd, mesh: str) -> None:
    key = f"/{mesh}/k"
    stale = etcd.put(key, b"1")
    current = etcd.put(key, b"2")
    assert etcd.replace(key, b"3", stale) is False
    assert etcd.get(key).value == b"2"  # type: ignore[union-attr]
    assert etcd.replace(key, b"3", current) is True
    assert etcd.delete_if(key, current) is False
    now = etcd.get(key).mod_revision  # type: ignore[union-attr]
    assert etcd.delete_if(key, now) is True
    assert etcd.get(key) is None
    assert etcd.replace(key, b"4", now) is False  # gone: nothing to replace


def test_gateway_errors_become_etcd_errors(etcd: Etcd) -> None:
    with pytest.raises(EtcdError, match=r"compacted|future revision") as info:
        etcd.compact(etcd.status() + 1000)
    assert "\n" not in str(info.value)


# -- leases --------------------------------------------------------------------------------------

def test_lease_keepalive_then_expiry(etcd: Etcd, mesh: str) -> None:
    lease = etcd.lease_grant(2)
    etcd.put(f"/{mesh}/leased", b"x", lease=lease)
    etcd.put(f"/{mesh}/kept", b"y")
    assert etcd.get(f"/{mesh}/leased").lease == lease  # type: ignore[union-attr]
    assert etcd.lease_keepalive(lease) > 0
    eventually(lambda: etcd.get(f"/{mesh}/leased") is None, "the leased key expires")
    with pytest.raises(LeaseExpired):
        etcd.lease_keepalive(lease)
    assert etcd.get(f"/{mesh}/kept") is not None


def test_lease_revoke_removes_keys(etcd: Etcd, mesh: str) -> None:
    lease = etcd.lease_grant(60)
    for name in "abc":
        etcd.put(f"/{mesh}/{name}", b"x", lease=lease)
    etcd.lease_revoke(lease)
    assert etcd.get_prefix(f"/{mesh}/")[0] == []
    etcd.lease_revoke(lease)  # already gone: no error
    with pytest.raises(LeaseExpired):
        etcd.lease_keepalive(lease)
    with pytest.raises(EtcdError, match="lease not found"):
        etcd.put(f"/{mesh}/d", b"x", lease=lease)


# -- watch ---------------------------------------------------------------------------------------

def test_watch_sees_history_and_live_changes_in_order(etcd: Etcd, mesh: str) -> None:
    p = f"/{mesh}/"
    start = etcd.put(p + "a", b"1")
    etcd.put(p + "b", b"2")
    etcd.delete(p + "a")
    etcd.put(f"/{mesh}x", b"not watched")
    events: list[Event] = []
    batches: list[WatchBatch] = []
    stop = threading.Event()
    for batch in etcd.watch(p, start, stop):
        batches.append(batch)
        events.extend(batch.events)
        if len(events) == 3:
            etcd.put(p + "c", b"3")  # live, after the watch caught up
            etcd.delete(p + "b")
        if len(events) >= 5:
            stop.set()
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        ("PUT", p + "a", b"1"), ("PUT", p + "b", b"2"), ("DELETE", p + "a", b""),
        ("PUT", p + "c", b"3"), ("DELETE", p + "b", b""),
    ]
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(revisions) and revisions[0] == start
    assert all(e.kv.mod_revision <= b.revision for b in batches for e in b.events)


def test_watch_resumes_without_loss_past_a_long_backlog(etcd: Etcd, mesh: str) -> None:
    # etcd sends a lagging watcher at most 1000 revisions per batch while its headers already say
    # the current revision; resuming from next_revision (not the header) must lose nothing.
    p = f"/{mesh}/"
    start = etcd.status() + 1
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: etcd.put(f"{p}{i:05d}", b"x"), range(1200)))
    seen: list[int] = []
    resume = start
    while len(seen) < 1200:
        stop = threading.Event()
        timer = threading.Timer(WAIT_S, stop.set)  # a resume past a lost event would wait forever
        timer.start()
        got_batch = False
        for batch in etcd.watch(p, resume, stop):
            seen += [e.kv.mod_revision for e in batch.events]
            resume, got_batch = batch.next_revision, True
            stop.set()  # one batch per stream: every resume is exercised
        timer.cancel()
        assert got_batch, f"no events after revision {resume}: {len(seen)} of 1200 seen"
    assert seen == list(range(seen[0], seen[0] + 1200))
    assert seen[0] >= start


def test_watch_after_compaction_raises_compacted(etcd: Etcd, mesh: str) -> None:
    first = etcd.put(f"/{mesh}/k", b"1")
    etcd.put(f"/{mesh}/k", b"2")
    last = etcd.put(f"/{mesh}/k", b"3")
    etcd.compact(last)
    with pytest.raises(Compacted) as info:
        for _ in etcd.watch(f"/{mesh}/", first, threading.Event()):
            pass
    assert info.value.compact_revision == last
    # from the compaction point on, the watch works
    assert collect(etcd, f"/{mesh}/", last, 1)[0].kv.value == b"3"


def test_watch_honours_stop(etcd: Etcd, mesh: str) -> None:
    stop = threading.Event()
    got: list[WatchBatch] = []
    finished = threading.Event()

    start = etcd.status() + 1  # read before the put, so the put is after the start

    def run() -> None:
        got.extend(etcd.watch(f"/{mesh}/", start, stop))
        finished.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        etcd.put(f"/{mesh}/k", b"v")
        eventually(lambda: bool(got), "the watch delivers a put")
    finally:
        stop.set()  # the stream is idle now: the stop must be noticed without any traffic
    t.join(WAIT_S)
    assert finished.is_set()
    assert [e.kv.key for b in got for e in b.events] == [f"/{mesh}/k"]


def test_endpoint_failover(server: EtcdServer, mesh: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    etcd = Etcd([dead, server.url], timeout_s=2)
    rev = etcd.put(f"/{mesh}/k", b"v")
    assert etcd.get(f"/{mesh}/k") is not None
    assert collect(etcd, f"/{mesh}/", rev, 1)[0].kv.key == f"/{mesh}/k"
    with pytest.raises(EtcdUnavailable, match="unreachable"):
        Etcd([dead], timeout_s=2).status()


# -- etcd going away -----------------------------------------------------------------------------

def test_etcd_stopped_then_started_again() -> None:
    with EtcdServer("restart") as srv:
        etcd = Etcd([srv.url], timeout_s=2)
        rev = etcd.put("/r/k", b"before")
        seen: list[WatchBatch] = []
        broken: list[BaseException] = []

        def watch() -> None:
            try:
                seen.extend(etcd.watch("/r/", rev + 1, threading.Event()))
            except BaseException as exc:
                broken.append(exc)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        etcd.put("/r/probe", b"")
        eventually(lambda: bool(seen), "the watch is on the stream")
        srv.stop()
        t.join(WAIT_S)
        assert not t.is_alive()
        assert len(broken) == 1 and isinstance(broken[0], EtcdUnavailable), broken
        for call in (lambda: etcd.get("/r/k"), lambda: etcd.put("/r/k", b"x"), etcd.status,
                     lambda: etcd.lease_grant(5), lambda: next(etcd.watch("/r/", 1, threading.Event()))):
            with pytest.raises(EtcdUnavailable) as info:
                call()
            assert "\n" not in str(info.value)
        srv.start()
        assert etcd.get("/r/k").value == b"before"  # type: ignore[union-attr]
        assert etcd.put("/r/k", b"after") > rev
        assert collect(etcd, "/r/", rev, 1)[0].kv.value == b"before"


def test_watch_breaks_when_etcd_is_killed() -> None:
    with EtcdServer("killed") as srv:
        etcd = Etcd([srv.url], timeout_s=2)
        rev = etcd.put("/r/k", b"x")
        stream = etcd.watch("/r/", rev, threading.Event())
        assert next(stream).events[0].kv.key == "/r/k"
        srv.kill()
        with pytest.raises(EtcdUnavailable):
            next(stream)


# -- the shared store ----------------------------------------------------------------------------

CIDR8 = IPv4Network("10.77.0.0/21")  # exactly eight /24 blocks


def test_ensure_cluster_first_host_records_later_hosts_must_agree(etcd: Etcd, mesh: str) -> None:
    first = store.ensure_cluster(etcd, mesh, CIDR8, 24, "example.org", now=100.0)
    assert (first.cluster_cidr, first.block_prefix, first.trust_domain, first.created_at) == \
        (CIDR8, 24, "example.org", 100.0)
    assert store.ensure_cluster(etcd, mesh) == first
    assert store.ensure_cluster(etcd, mesh, CIDR8, None, "example.org") == first
    with pytest.raises(ConflictError, match=r"refusing cluster CIDR 10\.1\.0\.0/16 \(the mesh has 10\.77\.0\.0/21\)"):
        store.ensure_cluster(etcd, mesh, IPv4Network("10.1.0.0/16"))
    with pytest.raises(ConflictError, match=r"block size 26.*trust domain cluster\.local"):
        store.ensure_cluster(etcd, mesh, None, 26, "cluster.local")


def test_ensure_cluster_race_has_one_winner(etcd: Etcd, mesh: str) -> None:
    barrier = threading.Barrier(8)

    def join(i: int) -> store.ClusterSettings:
        barrier.wait()
        return store.ensure_cluster(etcd, mesh, CIDR8, 24, "cluster.local", now=float(i))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(join, range(8)))
    assert len(set(results)) == 1


def test_defaults_and_bad_names(etcd: Etcd, mesh: str) -> None:
    settings = store.ensure_cluster(etcd, mesh)
    assert (str(settings.cluster_cidr), settings.block_prefix, settings.trust_domain) == \
        ("10.188.0.0/16", 24, "cluster.local")
    with pytest.raises(UserError, match="mesh name"):
        store.ensure_cluster(etcd, "Bad_Mesh")
    with pytest.raises(UserError, match="host name"):
        store.claim_block(etcd, mesh, "Bad_Host", settings)


def _holders(etcd: Etcd, mesh: str) -> dict[IPv4Network, str]:
    return {block: host for block, (host, _) in store.block_holders(etcd, mesh).items()}


def test_claim_block_race_in_threads(etcd: Etcd, mesh: str) -> None:
    settings = store.ensure_cluster(etcd, mesh, CIDR8, 24)
    hosts = [f"host-{i}" for i in range(8)]
    barrier = threading.Barrier(len(hosts))

    def claim(host: str) -> IPv4Network:
        barrier.wait()
        return store.claim_block(etcd, mesh, host, settings)

    with ThreadPoolExecutor(len(hosts)) as pool:
        got = dict(zip(hosts, pool.map(claim, hosts), strict=True))
    assert sorted(got.values()) == list(CIDR8.subnets(new_prefix=24))  # distinct, and all of them
    assert _holders(etcd, mesh) == {block: host for host, block in got.items()}
    for host, block in got.items():  # a host that claims again gets its own block back
        assert store.claim_block(etcd, mesh, host, settings) == block
    with pytest.raises(ConflictError, match=r"every /24 block of 10\.77\.0\.0/21 is held"):
        store.claim_block(etcd, mesh, "host-8", settings)


CLAIMER = """
import json, sys, threading, time
from pathlib import Path
from meshns.cluster import store
from meshns.cluster.etcd import Etcd
url, mesh, go, *hosts = sys.argv[1:]
etcd = Etcd([url])
settings = store.get_cluster(etcd, mesh)
while not Path(go).exists():
    time.sleep(0.005)
out = {}
def claim(host):
    out[host] = str(store.claim_block(etcd, mesh, host, settings))
threads = [threading.Thread(target=claim, args=(h,)) for h in hosts]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


def test_claim_block_race_in_two_processes(server: EtcdServer, etcd: Etcd, mesh: str, tmp_path: Path) -> None:
    store.ensure_cluster(etcd, mesh, CIDR8, 24)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, server.url, mesh, str(go), *[f"p{n}-h{i}" for i in range(4)]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for n in range(2)
    ]
    go.touch()
    got: dict[str, str] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=WAIT_S * 2)
        assert proc.returncode == 0, err.decode()
        got.update(json.loads(out))
    assert len(got) == 8
    assert sorted(IPv4Network(b) for b in got.values()) == list(CIDR8.subnets(new_prefix=24))
    assert _holders(etcd, mesh) == {IPv4Network(block): host for host, block in got.items()}


def test_claim_wanted_block(etcd: Etcd, mesh: str) -> None:
    settings = store.ensure_cluster(etcd, mesh, CIDR8, 24)
    want = IPv4Network("10.77.5.0/24")
    assert store.claim_block(etcd, mesh, "alpha", settings, want, now=5.0) == want
    assert store.claim_block(etcd, mesh, "alpha", settings, want) == want
    assert store.claim_block(etcd, mesh, "alpha", settings) == want
    with pytest.raises(ConflictError, match=r"10\.77\.5\.0/24 is held by host 'alpha'"):
        store.claim_block(etcd, mesh, "beta", settings, want)
    with pytest.raises(UserError, match=r"already holds pod CIDR 10\.77\.5\.0/24"):
        store.claim_block(etcd, mesh, "alpha", settings, IPv4Network("10.77.6.0/24"))
    for bad in ("10.77.5.0/25", "10.78.0.0/24"):
        with pytest.raises(UserError, match="not a /24 block"):
            store.claim_block(etcd, mesh, "beta", settings, IPv4Network(bad))
    assert store.claim_block(etcd, mesh, "beta", settings) == IPv4Network("10.77.0.0/24")
    record = json.loads(etcd.get(keys.block_key(mesh, want)).value)  # type: ignore[union-attr]
    assert record == {"host": "alpha", "claimed_at": 5.0}


def test_release_block(etcd: Etcd, mesh: str) -> None:
    settings = store.ensure_cluster(etcd, mesh, CIDR8, 24)
    a = store.claim_block(etcd, mesh, "alpha", settings)
    b = store.claim_block(etcd, mesh, "beta", settings)
    assert store.release_block(etcd, mesh, "alpha") == [a]
    assert store.release_block(etcd, mesh, "alpha") == []
    assert _holders(etcd, mesh) == {b: "beta"}
    assert store.claim_block(etcd, mesh, "gamma", settings) == a  # the freed block is reused


def test_hosts_and_pods_live_under_their_lease(etcd: Etcd, mesh: str) -> None:
    lease = etcd.lease_grant(60)
    store.register_host(etcd, mesh, {"name": "h2", "address": "10.9.0.3", "pod_cidr": "10.77.1.0/24"}, lease)
    store.register_host(etcd, mesh, {"name": "h1", "address": "10.9.0.2", "pod_cidr": "10.77.0.0/24"}, lease)
    store.put_pod(etcd, mesh, "h1", "web", {"ip": "10.77.0.2"}, lease)
    store.put_pod(etcd, mesh, "h2", "db", {"ip": "10.77.1.2"}, lease)
    assert [h["name"] for h in store.list_hosts(etcd, mesh)] == ["h1", "h2"]
    assert store.list_pods(etcd, mesh)[0] == {("h1", "web"): {"ip": "10.77.0.2"}, ("h2", "db"): {"ip": "10.77.1.2"}}
    assert list(store.list_pods(etcd, mesh, "h2")[0]) == [("h2", "db")]
    assert store.delete_pod(etcd, mesh, "h2", "db") is True
    with pytest.raises(UserError):
        store.register_host(etcd, mesh, {"address": "x"}, lease)
    etcd.lease_revoke(lease)
    assert store.list_hosts(etcd, mesh) == []
    assert store.list_pods(etcd, mesh)[0] == {}
