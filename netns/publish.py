"""Publishing: after any change, every pod gets fresh hosts entries and a fresh snapshot.

Runs under the mesh lock so two writers cannot interleave an older view after a newer one.
Snapshots are written to a temporary name and renamed, so a sidecar never reads half a file;
hosts files are rewritten in place (see netns.files) because running programs hold a bind
mount of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from meshns.compiler import compile_services, pod_security, security_for, snapshot_for, stored_docs, workloads_of
from meshns.mesh import Mesh
from meshns.mtls.ca import CertAuthority
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
        docs = stored_docs(reg.list_configs())
        ca_dir = mesh.cfg.ca_dir
        trust_domain = CertAuthority.load(ca_dir).trust_domain if CertAuthority.exists(ca_dir) else None
        sec = pod_security(pods, docs, trust_domain)
        revoked = reg.list_revoked()
        compiled, warnings = compile_services(services, pods, docs, sec)
        workloads = workloads_of(pods, sec)
        hosts = files.render_hosts([(p.name, p.ip) for p in pods] + [(s.name, s.vip) for s in services])
        for pod in pods:
            files.write_hosts(pod.netns, hosts)
            pod_dir = mesh.cfg.pod_dir(pod.name)
            if pod_dir.is_dir():
                snap = snapshot_for(pod.name, generation, compiled, workloads,
                                    security_for(pod.name, sec, trust_domain, revoked))
                write_atomic(pod_dir / SNAPSHOT_FILE, snap.to_json())
    return warnings
