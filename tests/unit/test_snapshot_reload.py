"""The sidecar's snapshot store: a rewrite that only moves the version on is swapped in without
rebuilding the snapshot's objects and index; any other change is parsed in full. The snapshot is
two files, the mesh-wide snapshot.json and the pod's security.json, combined into one Snapshot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshns.dataplane.snapshots import SECURITY_FILE, SnapshotStore, same_but_version
from meshns.snapshot import (
    AuthzPolicy,
    Endpoint,
    Security,
    Service,
    ServicePort,
    Snapshot,
    combine,
    mesh_json,
    security_json,
)

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


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a new inode, as publish does


def _write(path: Path, snap: Snapshot, version: int) -> None:
    """Both files as publish writes them: security.json first, and only when it changed."""
    own = path.with_name(SECURITY_FILE)
    text = security_json(snap.pod, snap.security)
    if not own.exists() or own.read_text() != text:
        _replace(own, text)
    _replace(path, mesh_json(version, snap.services, snap.workloads))


_SEC = {"identity": "spiffe://td/ns/default/sa/a"}


@pytest.mark.parametrize(("shared", "own", "want"), [
    ({"version": 2, "services": []}, {"pod": "a", "security": _SEC},
     {"version": 2, "services": [], "pod": "a", "security": _SEC}),
    ({"version": 2, "services": []}, None,  # no security.json: the default Security, our own name
     {"version": 2, "services": [], "pod": "me", "security": None}),
    ({"version": 2, "services": []}, {"security": _SEC},  # no name in it: our own
     {"version": 2, "services": [], "pod": "me", "security": _SEC}),
    # A single-file snapshot (before the split) without security.json: its own part is used...
    ({"version": 2, "services": [], "pod": "a", "security": _SEC}, None,
     {"version": 2, "services": [], "pod": "a", "security": _SEC}),
    # ...and a security.json beside it wins.
    ({"version": 2, "services": [], "pod": "a", "security": {"old": 1}}, {"pod": "a", "security": _SEC},
     {"version": 2, "services": [], "pod": "a", "security": _SEC}),
])
def test_combine(shared: object, own: object, want: dict[str, object]) -> None:
    assert combine(shared, own, "me") == want


@pytest.mark.parametrize(("shared", "own"), [([], None), ("x", None), ({"version": 1}, []), ({"version": 1}, 3)])
def test_combine_refuses_what_is_not_an_object(shared: object, own: object) -> None:
    with pytest.raises(TypeError):
        combine(shared, own, "me")


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


def test_a_security_change_alone_is_loaded_and_a_missing_file_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore("a", None, str(path))
    _replace(path, mesh_json(1, (), ()))  # no security.json (yet)
    assert store.check() and store.current.snapshot == Snapshot(1, "a")
    deny = Security(identity="spiffe://td/ns/default/sa/a", policies=(AuthzPolicy("deny-all", "DENY"),))
    _replace(tmp_path / SECURITY_FILE, security_json("a", deny))  # snapshot.json untouched
    assert store.check() and store.current.snapshot.security == deny and store.version == 1
    assert not store.check()  # nothing changed since


def test_a_broken_security_file_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    store = SnapshotStore("a", None, str(path))
    _write(path, Snapshot(1, "a", security=Security(identity="spiffe://td/ns/default/sa/a")), 1)
    assert store.check()
    before = store.current
    _replace(tmp_path / SECURITY_FILE, '{"pod": "a", "secur')
    _replace(path, mesh_json(2, (), ()))
    assert not store.check() and store.current is before and store.reload_errors == 1
    assert not store.check() and store.reload_errors == 1  # not parsed again until a file changes
    _replace(tmp_path / SECURITY_FILE, security_json("a", Security()))
    assert store.check() and store.version == 2 and store.current.snapshot.security == Security()
