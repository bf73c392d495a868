"""Publishing: after any change, every pod gets fresh hosts entries and a fresh snapshot.

Runs under the mesh lock so two writers cannot interleave an older view after a newer one.
Snapshots are written to a temporary name and renamed, so a sidecar never reads half a file;
hosts files are rewritten in place (see netns.files) because running programs hold a bind
mount of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from meshns.compiler import compile_services, snapshot_for, stored_docs, workloads_of
from meshns.mesh import Mesh
from meshns.netns import files

SNAPSHOT_FILE = "snapshot.json"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def publish(mesh: Mesh) -> list[str]:
    """Rewrite every pod's hosts file and snapshot; returns compile warnings."""
    with mesh.locked():
        reg = mesh.registry
        generation = reg.generation()
        pods = reg.list_pods()
        services = reg.list_services()
        compiled, warnings = compile_services(services, pods, stored_docs(reg.list_configs()))
        workloads = workloads_of(pods)
        hosts = files.render_hosts([(p.name, p.ip) for p in pods] + [(s.name, s.vip) for s in services])
        for pod in pods:
            files.write_hosts(pod.netns, hosts)
            pod_dir = mesh.cfg.pod_dir(pod.name)
            if pod_dir.is_dir():
                write_atomic(pod_dir / SNAPSHOT_FILE, snapshot_for(pod.name, generation, compiled, workloads).to_json())
    return warnings
