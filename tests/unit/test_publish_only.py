"""create's first publish writes the new pod's files alone, with the whole mesh in them; the
publish after it is ready writes every pod's (netns.publish, netns.lifecycle). A pod's snapshot is
the shared snapshot.json plus its own security.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from meshns.config import ConfigRequest, resolve
from meshns.mesh import Mesh
from meshns.model import PodSpec
from meshns.netns import ipam
from meshns.netns.publish import SECURITY_FILE, SNAPSHOT_FILE, publish
from meshns.sqlite_registry import SqliteRegistry


def _snapshot(mesh: Mesh, pod: str) -> dict[str, object] | None:
    path = mesh.cfg.pod_dir(pod) / SNAPSHOT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _security(mesh: Mesh, pod: str) -> dict[str, object] | None:
    path = mesh.cfg.pod_dir(pod) / SECURITY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def test_only_writes_that_pods_files_with_every_pod_in_them(tmp_path: Path) -> None:
    cfg = resolve(ConfigRequest(state_dir=str(tmp_path)), {})
    mesh = Mesh(cfg, SqliteRegistry(cfg.registry_path, busy_timeout_s=0.2))
    for name in ("a", "b", "c"):
        mesh.registry.reserve_pod(name, f"mnstest-{name}", f"v{name}", PodSpec(), os.getpid(),
                                  lambda used: ipam.allocate(cfg.pod_cidr, used))
        cfg.pod_dir(name).mkdir(parents=True)
    publish(mesh, only="b")
    assert _snapshot(mesh, "a") is None and _snapshot(mesh, "c") is None
    assert _security(mesh, "a") is None and _security(mesh, "c") is None
    snap = _snapshot(mesh, "b")
    assert snap is not None and snap["version"] == mesh.registry.generation()
    assert isinstance(snap["workloads"], list) and len(snap["workloads"]) == 3
    assert set(snap) == {"version", "services", "workloads"}  # the mesh-wide part only
    own = _security(mesh, "b")
    assert own is not None and own["pod"] == "b" and set(own) == {"pod", "security"}
    publish(mesh)
    assert all(_snapshot(mesh, n) is not None and _security(mesh, n) is not None for n in ("a", "b", "c"))
    assert [_security(mesh, n)["pod"] for n in ("a", "b", "c")] == ["a", "b", "c"]  # type: ignore[index]
