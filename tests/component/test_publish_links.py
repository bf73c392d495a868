"""publish writes the mesh-wide snapshot.json once and hard-links it into every pod directory,
rewrites a pod's security.json only when it changed, and on a failed staging (a full state
directory) removes its temporaries and leaves every pod's files as they were (netns.publish)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from meshns.config import ConfigRequest, resolve
from meshns.errors import NoSpaceError
from meshns.mesh import Mesh
from meshns.model import PodSpec
from meshns.netns import gc, ipam
from meshns.netns import publish as publish_mod
from meshns.netns.publish import SECURITY_FILE, SNAPSHOT_FILE, publish
from meshns.sqlite_registry import SqliteRegistry


def _mesh(tmp_path: Path) -> Mesh:
    cfg = resolve(ConfigRequest(state_dir=str(tmp_path / "state")), {})
    return Mesh(cfg, SqliteRegistry(cfg.registry_path, busy_timeout_s=0.2))


def _add(mesh: Mesh, name: str) -> None:
    mesh.registry.reserve_pod(name, f"mnstest-{name}", f"v{name}", PodSpec(), os.getpid(),
                              lambda used: ipam.allocate(mesh.cfg.pod_cidr, used))
    mesh.cfg.pod_dir(name).mkdir(parents=True)


def _files(mesh: Mesh, pods: list[str]) -> dict[str, tuple[int, str]]:
    """(inode, text) of every pod's two files."""
    out = {}
    for pod in pods:
        for name in (SNAPSHOT_FILE, SECURITY_FILE):
            path = mesh.cfg.pod_dir(pod) / name
            out[f"{pod}/{name}"] = (path.stat().st_ino, path.read_text())
    return out


def _temporaries(mesh: Mesh) -> list[str]:
    found = [n for n in os.listdir(mesh.cfg.state_dir) if n.endswith(".tmp")]
    for d in (mesh.cfg.state_dir / "pods").iterdir():
        found += [f"{d.name}/{n}" for n in os.listdir(d) if n.endswith(".tmp")]
    return found


def test_one_inode_for_every_pod_and_security_rewritten_only_when_changed(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    for name in ("a", "b", "c"):
        _add(mesh, name)
    publish(mesh)
    before = _files(mesh, ["a", "b", "c"])
    inodes = {before[f"{p}/{SNAPSHOT_FILE}"][0] for p in ("a", "b", "c")}
    assert len(inodes) == 1  # one file, three names
    assert (mesh.cfg.pod_dir("a") / SNAPSHOT_FILE).stat().st_nlink == 3  # the staged name is gone
    assert _temporaries(mesh) == []
    _add(mesh, "d")  # what a create does: a new pod, and a publish for everyone
    publish(mesh)
    after = _files(mesh, ["a", "b", "c", "d"])
    for p in ("a", "b", "c"):
        assert after[f"{p}/{SECURITY_FILE}"] == before[f"{p}/{SECURITY_FILE}"]  # not rewritten
        assert after[f"{p}/{SNAPSHOT_FILE}"][0] != before[f"{p}/{SNAPSHOT_FILE}"][0]  # a new snapshot
    assert len({after[f"{p}/{SNAPSHOT_FILE}"][0] for p in ("a", "b", "c", "d")}) == 1
    assert '"pod":"d"' in after[f"d/{SNAPSHOT_FILE}"][1]  # the new pod is in every pod's workloads
    assert _temporaries(mesh) == []


@pytest.mark.parametrize("step", ["security", "shared", "link"])
def test_a_failed_staging_leaves_every_pod_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      step: str) -> None:
    mesh = _mesh(tmp_path)
    for name in ("a", "b", "c"):
        _add(mesh, name)
    publish(mesh)
    before = _files(mesh, ["a", "b", "c"])
    _add(mesh, "d")  # its security.json is new: the publish must stage one
    real_stage, real_link = publish_mod._stage, os.link
    links = []

    def full() -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def stage(path: Path, text: str) -> Path:
        if (step == "security" and path.name == SECURITY_FILE) or (step == "shared" and path.parent == mesh.cfg.state_dir):
            raise full()
        return real_stage(path, text)

    def link(src: Any, dst: Any) -> None:
        links.append(dst)
        if step == "link" and len(links) == 3:  # after two pods were staged
            raise full()
        real_link(src, dst)

    monkeypatch.setattr(publish_mod, "_stage", stage)
    monkeypatch.setattr(publish_mod.os, "link", link)
    with pytest.raises(NoSpaceError):
        publish(mesh)
    assert _files(mesh, ["a", "b", "c"]) == before
    assert not (mesh.cfg.pod_dir("d") / SNAPSHOT_FILE).exists()
    assert not (mesh.cfg.pod_dir("d") / SECURITY_FILE).exists()
    assert _temporaries(mesh) == []


def test_without_hard_links_each_pod_gets_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = _mesh(tmp_path)
    for name in ("a", "b"):
        _add(mesh, name)

    def no_link(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(publish_mod.os, "link", no_link)
    publish(mesh)
    files = _files(mesh, ["a", "b"])
    assert files[f"a/{SNAPSHOT_FILE}"][1] == files[f"b/{SNAPSHOT_FILE}"][1]
    assert files[f"a/{SNAPSHOT_FILE}"][0] != files[f"b/{SNAPSHOT_FILE}"][0]
    assert _temporaries(mesh) == []


def test_gc_removes_a_killed_publishs_staged_files(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    _add(mesh, "a")
    publish(mesh)
    dead = 2**22 + 1  # above pid_max's default: no such process
    left = [mesh.cfg.state_dir / f".{SNAPSHOT_FILE}.{dead}.tmp",
            mesh.cfg.pod_dir("a") / f".{SNAPSHOT_FILE}.{dead}.tmp",
            mesh.cfg.pod_dir("a") / f".{SECURITY_FILE}.{dead}.tmp"]
    for path in left:
        path.write_text("{}")
    keep = mesh.cfg.state_dir / f".other.{dead}.tmp"  # not publish's: left alone in the state directory
    keep.write_text("")
    done = gc._remove_staged(mesh.cfg.state_dir, prefix=f".{SNAPSHOT_FILE}.")
    done += gc._remove_staged(mesh.cfg.pod_dir("a"))
    assert len(done) == 3 and not any(p.exists() for p in left) and keep.exists()


def test_a_leftover_shared_file_of_our_pid_is_replaced_not_truncated(tmp_path: Path) -> None:
    """A publish killed after its renames leaves the shared staged file behind as a second name
    of every pod's live snapshot.json; a later publish that got the same pid must not write
    through it."""
    mesh = _mesh(tmp_path)
    _add(mesh, "a")
    publish(mesh)
    live = mesh.cfg.pod_dir("a") / SNAPSHOT_FILE
    text = live.read_text()
    os.link(live, publish_mod.staged_name(mesh.cfg.state_dir / SNAPSHOT_FILE))
    _add(mesh, "b")
    old = mesh.cfg.pod_dir("a") / "old.json"
    os.link(live, old)  # what a sidecar reading the old file sees
    publish(mesh)
    assert old.read_text() == text
    assert '"pod":"b"' in live.read_text() and _temporaries(mesh) == []
