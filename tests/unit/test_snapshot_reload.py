"""The sidecar's snapshot store: a rewrite that only moves the version on is swapped in without
rebuilding the snapshot's objects and index; any other change is parsed in full."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshns.dataplane.snapshots import SnapshotStore, same_but_version
from meshns.snapshot import Endpoint, Service, ServicePort, Snapshot

OLD = {"pod": "a", "version": 3, "services": [], "workloads": [{"pod": "b"}]}


@pytest.mark.parametrize(("new", "same"), [
    ({**OLD, "version": 4}, True),
    ({**OLD, "version": 3}, True),
    ({**OLD, "version": 4, "workloads": []}, False),  # a pod went away
    ({**OLD, "version": 4, "extra": 1}, False),
    ({k: v for k, v in OLD.items() if k != "services"}, False),
    ({**OLD, "version": "4"}, False),  # odd versions take the full parser's checks
    ({**OLD, "version": True}, False),
    ([OLD], False),
    ("text", False),
])
def test_same_but_version(new: object, same: bool) -> None:
    assert same_but_version(new, OLD) is same


def _write(path: Path, snap: Snapshot, version: int) -> None:
    text = Snapshot(version, snap.pod, snap.services, snap.workloads, snap.security).to_json()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a new inode, as publish does


def test_version_only_rewrite_keeps_the_built_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    svc = Service(name="reviews", vip="10.1.0.1", ports=(ServicePort(port=9080, target_port=9080),))
    snap = Snapshot(1, "a", (svc,), (Endpoint("b", "10.0.0.2", ()),))
    store = SnapshotStore("a", None, str(path))
    _write(path, snap, 1)
    assert store.check() and store.version == 1
    first = store.current
    _write(path, snap, 2)
    assert store.check() and store.version == 2 and store.reloads == 2
    assert store.current.by_dst is first.by_dst  # not rebuilt
    assert store.current.snapshot.services is first.snapshot.services
    assert store.current.snapshot == Snapshot(2, "a", (svc,), first.snapshot.workloads, first.snapshot.security)
    _write(path, Snapshot(3, "a", (), snap.workloads), 3)  # the service went away: parsed in full
    assert store.check() and store.version == 3 and store.lookup("10.1.0.1", 9080) is None
    _write(path, snap, 2)  # older versions are still refused
    assert not store.check() and store.version == 3


def test_a_snapshot_set_directly_is_not_compared_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore("a", None, str(path))
    _write(path, Snapshot(1, "a"), 1)
    assert store.check()
    svc = Service(name="s", vip="10.1.0.9", ports=(ServicePort(port=80, target_port=80),))
    store.set(Snapshot(1, "a", (svc,)))
    _write(path, Snapshot(2, "a"), 2)  # the same as the file before, but not as what is current
    assert store.check() and store.lookup("10.1.0.9", 80) is None
